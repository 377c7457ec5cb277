//! One file per request: each reads its attributes, checks them, and answers.

use super::*;

mod allocate;
mod binding;
mod channel_bind;
mod permission;
mod refresh;
