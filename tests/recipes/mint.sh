#!/bin/sh
# Mints a turnd REST credential with openssl: mint.sh SECRET USER TTL_SECONDS
# Prints the RTCIceServer fields as JSON: {"username":"<expiry>:<user>","credential":"..."}.
# The credential is base64(HMAC-SHA1(secret, username)); the expiry is a unix time TTL
# seconds ahead, and ":" (auth.rest-separator) joins it to the user.
set -eu
secret=$1 user=$2 ttl=$3
username="$(( $(date +%s) + ttl )):$user"
credential=$(printf '%s' "$username" | openssl dgst -sha1 -hmac "$secret" -binary | openssl base64 -A)
printf '{"username":"%s","credential":"%s"}\n' "$username" "$credential"
