//! RESP2, the Redis serialization protocol, as far as a read-only server needs it: commands
//! in (arrays of bulk strings, or inline lines as typed into telnet) and replies out.

use bytes::{Buf, BytesMut};

/// Most arguments one command may carry (MGET of the most keys a lookup takes, plus the name).
pub(crate) const MAX_ARGS: usize = unitable_reader::MAX_LOOKUP_KEYS + 1;
/// Longest argument, in bytes.
pub(crate) const MAX_ARG_BYTES: usize = 512 << 10;
/// Longest inline command line, in bytes.
const MAX_INLINE_BYTES: usize = 64 << 10;

/// A request the protocol cannot carry; the connection is closed after saying so.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) String);

/// Most bytes one command may take, all arguments together (what is buffered while it is
/// incomplete).
pub(crate) const MAX_COMMAND_BYTES: usize = 64 << 20;

/// Takes the next whole command off the front of `buf`: `Ok(None)` while it is incomplete.
pub(crate) fn next_command(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
    let command = parse(buf)?;
    if command.is_none() && buf.len() > MAX_COMMAND_BYTES {
        return Err(ProtocolError(format!(
            "a command may take at most {MAX_COMMAND_BYTES} bytes"
        )));
    }
    Ok(command)
}

fn parse(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        return inline(buf);
    }
    let mut at = 0usize;
    let Some(count) = number_line(buf, &mut at, b'*')? else {
        return Ok(None);
    };
    let count = usize::try_from(count).unwrap_or(0);
    if count > MAX_ARGS {
        return Err(ProtocolError(format!(
            "a command may carry at most {MAX_ARGS} arguments, this one has {count}"
        )));
    }
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                char::from(buf[at]).escape_default()
            )));
        }
        let Some(len) = number_line(buf, &mut at, b'$')? else {
            return Ok(None);
        };
        let len = usize::try_from(len)
            .map_err(|_| ProtocolError("a command argument cannot be null".into()))?;
        if len > MAX_ARG_BYTES {
            return Err(ProtocolError(format!(
                "an argument may hold at most {MAX_ARG_BYTES} bytes, this one has {len}"
            )));
        }
        if buf.len() < at + len + 2 {
            return Ok(None);
        }
        if &buf[at + len..at + len + 2] != b"\r\n" {
            return Err(ProtocolError("a bulk string must end with CRLF".into()));
        }
        args.push(buf[at..at + len].to_vec());
        at += len + 2;
    }
    buf.advance(at);
    Ok(Some(args))
}

/// `<prefix><integer>\r\n` at `*at`, moving past it; `Ok(None)` while the line is incomplete.
fn number_line(buf: &[u8], at: &mut usize, prefix: u8) -> Result<Option<i64>, ProtocolError> {
    debug_assert_eq!(buf.get(*at), Some(&prefix));
    let Some(end) = buf[*at..].windows(2).position(|w| w == b"\r\n") else {
        if buf.len() - *at > 32 {
            return Err(ProtocolError("a length line is too long".into()));
        }
        return Ok(None);
    };
    let text = &buf[*at + 1..*at + end];
    let n = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| {
            ProtocolError(format!(
                "invalid length '{}'",
                String::from_utf8_lossy(text).escape_default()
            ))
        })?;
    *at += end + 2;
    Ok(Some(n))
}

/// An inline command: one line of words separated by spaces (no quoting).
fn inline(buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE_BYTES {
            return Err(ProtocolError(format!(
                "an inline command may hold at most {MAX_INLINE_BYTES} bytes"
            )));
        }
        return Ok(None);
    };
    let line = buf.split_to(end + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args: Vec<Vec<u8>> = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if args.len() > MAX_ARGS {
        return Err(ProtocolError(format!(
            "a command may carry at most {MAX_ARGS} arguments"
        )));
    }
    Ok(Some(args))
}

/// A reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`-style status.
    Status(&'static str),
    /// `-ERR ...`: the text after the `-` (its first word is the error's kind).
    Error(String),
    Integer(i64),
    /// A bulk string, or nil.
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    /// A generic error (`ERR` + message), on one line.
    pub(crate) fn err(message: impl AsRef<str>) -> Self {
        Reply::Error(format!("ERR {}", one_line(message.as_ref())))
    }

    /// Appends the reply's encoding to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Status(s) => {
                out.push(b'+');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(e) => {
                out.push(b'-');
                out.extend_from_slice(one_line(e).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(bytes)) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.write(out);
                }
            }
        }
    }
}

/// `text` with line breaks turned into spaces (a status or error is one line).
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(cmd) = next_command(&mut buf)? {
            out.push(cmd);
        }
        Ok(out)
    }

    #[test]
    fn commands_split_anywhere_are_read_whole_and_in_order() {
        let input = b"*2\r\n$3\r\nGET\r\n$6\r\nt.a:42\r\n*3\r\n$4\r\nMGET\r\n$0\r\n\r\n$5\r\na\r\nbc\r\nPING hello\r\n";
        let want = vec![
            vec![b"GET".to_vec(), b"t.a:42".to_vec()],
            vec![b"MGET".to_vec(), b"".to_vec(), b"a\r\nbc".to_vec()],
            vec![b"PING".to_vec(), b"hello".to_vec()],
        ];
        assert_eq!(parse_all(input).unwrap(), want);
        // Fed one byte at a time, nothing is taken before it is whole.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(cmd) = next_command(&mut buf).unwrap() {
                got.push(cmd);
            }
        }
        assert_eq!(got, want);
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        for bad in [
            &b"*1\r\n+GET\r\n"[..],
            b"*x\r\n",
            b"*1\r\n$3\r\nGETXX",
            b"*1\r\n$-1\r\n",
            b"*99999\r\n",
        ] {
            assert!(parse_all(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_all(format!("*1\r\n${}\r\n", MAX_ARG_BYTES + 1).as_bytes()).is_err());
        // Many large arguments: refused once more than a command's bytes are waiting.
        let mut buf = BytesMut::from(&b"*10000\r\n"[..]);
        let arg = format!("${MAX_ARG_BYTES}\r\n{}\r\n", "x".repeat(MAX_ARG_BYTES));
        let mut refused = false;
        for _ in 0..200 {
            buf.extend_from_slice(arg.as_bytes());
            match next_command(&mut buf) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("an incomplete command was taken"),
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused && buf.len() <= MAX_COMMAND_BYTES + arg.len());
    }

    #[test]
    fn replies_are_encoded_as_resp2() {
        let mut out = Vec::new();
        Reply::Array(vec![
            Reply::Bulk(Some(b"{\"id\":1}".to_vec())),
            Reply::Bulk(None),
            Reply::Integer(3),
            Reply::Status("OK"),
            Reply::err("two\r\nlines"),
        ])
        .write(&mut out);
        assert_eq!(
            out,
            b"*5\r\n$8\r\n{\"id\":1}\r\n$-1\r\n:3\r\n+OK\r\n-ERR two  lines\r\n".to_vec()
        );
    }
}
