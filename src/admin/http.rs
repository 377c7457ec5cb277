//! Just enough HTTP/1.1 for the admin API (RFC 9112): one request per connection, a bounded
//! head, a small form body at most (the TURN REST API's POST), answers with Content-Length and
//! `Connection: close`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::MAX_HEAD;

/// Largest request body accepted: a form-encoded TURN REST API request
/// (`service=turn&username=..&key=..`) is far smaller.
pub const MAX_BODY: usize = 2048;

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded.
    pub path: String,
    /// Query parameters, percent-decoded, in order; then those of an
    /// `application/x-www-form-urlencoded` body.
    pub query: Vec<(String, String)>,
    /// The token of `Authorization: Bearer <token>`, if any.
    pub bearer: Option<String>,
    /// The value of the pages' session cookie (`Cookie: turnd_admin=...`), if any.
    pub cookie: Option<String>,
    /// Where the body's fields start in `query` (all of it comes from the URL before).
    pub body_from: usize,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field of the form-encoded body only (never of the URL: what a URL carries can
    /// end up in logs and histories).
    pub fn body_param(&self, name: &str) -> Option<&str> {
        self.query
            .get(self.body_from..)
            .unwrap_or_default()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The name of the cookie the pages' login sets.
pub const COOKIE: &str = "turnd_admin";

pub enum ReadError {
    /// The client went away before sending a request.
    Closed,
    /// Answer with this status and reason.
    Bad(u16, &'static str),
}

/// Reads and parses one request head and its body; refuses heads over [`MAX_HEAD`], bodies
/// over [`MAX_BODY`] and chunked bodies. A form-encoded body's fields join the query's.
pub async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    let end = loop {
        if n == buf.len() {
            return Err(ReadError::Bad(431, "request head too large"));
        }
        let got = stream
            .read(&mut buf[n..])
            .await
            .map_err(|_| ReadError::Closed)?;
        if got == 0 {
            if n == 0 {
                return Err(ReadError::Closed);
            }
            return Err(ReadError::Bad(400, "incomplete request"));
        }
        let from = n.saturating_sub(3);
        n += got;
        if let Some(i) = find(&buf[from..n], b"\r\n\r\n") {
            break from + i;
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ReadError::Bad(400, "not UTF-8"))?;
    let (mut req, body) = parse_head_and_body(head)?;
    if body.length > 0 {
        // What arrived with the head, then the rest.
        let mut data = buf[end + 4..n].to_vec();
        if data.len() > body.length {
            return Err(ReadError::Bad(400, "more bytes than Content-Length"));
        }
        let start = data.len();
        data.resize(body.length, 0);
        stream
            .read_exact(&mut data[start..])
            .await
            .map_err(|_| ReadError::Bad(400, "incomplete request body"))?;
        req.body_from = req.query.len();
        if body.form {
            let text = std::str::from_utf8(&data).map_err(|_| ReadError::Bad(400, "not UTF-8"))?;
            req.query.extend(parse_form(text)?);
        }
    }
    Ok(req)
}

/// What the head says of the body.
struct Body {
    length: usize,
    /// `Content-Type: application/x-www-form-urlencoded`.
    form: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses the request line and headers (without the final empty line).
#[cfg(test)]
fn parse_head(head: &str) -> Result<Request, ReadError> {
    parse_head_and_body(head).map(|(r, _)| r)
}

fn parse_head_and_body(head: &str) -> Result<(Request, Body), ReadError> {
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(505, "HTTP/1.x only"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Bad(400, "bad method"));
    }
    let mut bearer = None;
    let mut cookie = None;
    let mut body = Body {
        length: 0,
        form: false,
    };
    for h in lines {
        let Some((name, value)) = h.split_once(':') else {
            return Err(ReadError::Bad(400, "bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            let mut it = value.splitn(2, ' ');
            if let (Some(scheme), Some(token)) = (it.next(), it.next())
                && scheme.eq_ignore_ascii_case("bearer")
            {
                bearer = Some(token.trim().to_string());
            }
        } else if name.eq_ignore_ascii_case("cookie") {
            for c in value.split(';') {
                if let Some((k, v)) = c.trim().split_once('=')
                    && k == COOKIE
                {
                    cookie = Some(v.trim().to_string());
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReadError::Bad(400, "bad Content-Length"));
            }
            match value.parse::<usize>() {
                Ok(n) if n <= MAX_BODY => body.length = n,
                _ => return Err(ReadError::Bad(413, "request body too large")),
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            let media = value.split(';').next().unwrap_or_default().trim();
            body.form = media.eq_ignore_ascii_case("application/x-www-form-urlencoded");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Bad(
                413,
                "chunked request bodies are not accepted",
            ));
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(ReadError::Bad(400, "bad request target"));
    }
    let path = percent_decode(path).ok_or(ReadError::Bad(400, "bad percent-encoding"))?;
    let query = parse_form(query)?;
    let request = Request {
        method: method.to_string(),
        path,
        body_from: query.len(),
        query,
        bearer,
        cookie,
    };
    Ok((request, body))
}

/// `k=v&k2=v2`, percent-decoded (a query string or a form body).
fn parse_form(s: &str) -> Result<Vec<(String, String)>, ReadError> {
    let mut params = Vec::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or(ReadError::Bad(400, "bad percent-encoding"))?;
        let v = percent_decode(v).ok_or(ReadError::Bad(400, "bad percent-encoding"))?;
        params.push((k, v));
    }
    Ok(params)
}

/// `%XX` and `+` (space, as forms send it) decoded; None for a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Sent as `WWW-Authenticate` on 401.
    pub challenge: bool,
    /// More header lines (`Set-Cookie`, `Location`, the pages' security headers).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
            challenge: false,
            headers: Vec::new(),
        }
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            challenge: false,
            headers: Vec::new(),
        }
    }

    /// A JSON `{"error": "..."}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, serde_json::json!({ "error": message }).to_string())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

pub async fn write_response(stream: &mut TcpStream, r: &Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.challenge {
        head.push_str("WWW-Authenticate: Bearer realm=\"turnd\"\r\n");
    }
    for (name, value) in &r.headers {
        // Values are the server's own (no CR or LF from a request reaches them).
        if !value.contains(['\r', '\n']) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(r.body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(head: &str) -> Request {
        match parse_head(head) {
            Ok(r) => r,
            Err(_) => panic!("{head:?} should parse"),
        }
    }

    fn bad(head: &str) -> u16 {
        match parse_head(head) {
            Err(ReadError::Bad(s, _)) => s,
            _ => panic!("{head:?} should be refused"),
        }
    }

    #[test]
    fn parses_path_query_and_token() {
        let r =
            ok("GET /sessions?user=al%20ice&x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer  t0k ");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/sessions");
        assert_eq!(r.param("user"), Some("al ice"));
        assert_eq!(r.param("x"), Some(""));
        assert_eq!(r.bearer.as_deref(), Some("t0k"));
        let r = ok("DELETE /sessions/0-5 HTTP/1.0\r\nauthorization: basic abc");
        assert_eq!(r.bearer, None);
        assert_eq!(r.cookie, None);
        let r = ok("GET /status HTTP/1.1\r\nCookie: a=b; turnd_admin=v.1.2 ;c=d");
        assert_eq!(r.cookie.as_deref(), Some("v.1.2"));
        let r = ok("GET /status HTTP/1.1\r\nCookie: xturnd_admin=v");
        assert_eq!(r.cookie, None);
    }

    #[test]
    fn reads_what_the_head_says_of_a_form_body() {
        let head = "POST /turn?service=turn HTTP/1.1\r\nContent-Length: 12\r\n\
                    Content-Type: application/x-www-form-urlencoded; charset=UTF-8";
        let Ok((r, body)) = parse_head_and_body(head) else {
            panic!("should parse")
        };
        assert_eq!((body.length, body.form), (12, true));
        assert_eq!(r.param("service"), Some("turn"));
        assert_eq!(r.body_param("service"), None, "from the URL, not the body");
        let Ok((_, body)) = parse_head_and_body("POST / HTTP/1.1\r\nContent-Length: 3") else {
            panic!("should parse")
        };
        assert_eq!((body.length, body.form), (3, false));
        let Ok(form) = parse_form("a=1&b=x%20y&&c") else {
            panic!("should parse")
        };
        assert_eq!(
            form,
            [("a", "1"), ("b", "x y"), ("c", "")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(parse_form("a=%zz").is_err());
    }

    #[test]
    fn refuses_bad_heads() {
        assert_eq!(bad("GET /"), 400);
        assert_eq!(bad("GET / HTTP/2"), 505);
        assert_eq!(bad("get / HTTP/1.1"), 400);
        assert_eq!(bad("GET x HTTP/1.1"), 400);
        assert_eq!(bad("GET /%zz HTTP/1.1"), 400);
        assert_eq!(bad("GET /%ff HTTP/1.1"), 400);
        assert_eq!(bad("GET / HTTP/1.1\r\nnocolon"), 400);
        assert_eq!(bad("POST / HTTP/1.1\r\nContent-Length: 2049"), 413);
        assert_eq!(
            bad("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999"),
            413
        );
        assert_eq!(bad("POST / HTTP/1.1\r\nContent-Length: -1"), 400);
        assert_eq!(bad("POST / HTTP/1.1\r\nContent-Length: +5"), 400);
        assert_eq!(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked"), 413);
        assert_eq!(bad("GET /% HTTP/1.1"), 400);
    }
}
