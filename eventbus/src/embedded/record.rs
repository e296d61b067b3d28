//! The disk record codec: subject, duplicate key, publish time and the encoded event.

use super::*;

/// A record in the log, decoded lazily.
pub(super) struct Record<'a> {
    pub(super) subject: &'a str,
    pub(super) dedup: &'a str,
    pub(super) published_ms: i64,
    pub(super) payload: &'a [u8],
}

/// Version 2: events in binary-mode encoding (version 1 held structured JSON).
pub(super) const RECORD_VERSION: u8 = 2;

pub(super) fn encode_record(
    subject: &str,
    dedup: &str,
    published_ms: i64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + subject.len() + dedup.len() + 8 + payload.len());
    out.push(RECORD_VERSION);
    for part in [subject, dedup] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
    }
    out.extend_from_slice(&published_ms.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub(super) fn decode_record(bytes: &[u8]) -> Option<Record<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if version != RECORD_VERSION {
        return None;
    }
    let (subject, rest) = take_str(rest)?;
    let (dedup, rest) = take_str(rest)?;
    let (time, payload) = rest.split_at_checked(8)?;
    let published_ms = i64::from_be_bytes(time.try_into().ok()?);
    Some(Record { subject, dedup, published_ms, payload })
}

pub(super) fn take_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = bytes.split_at_checked(2)?;
    let len = usize::from(u16::from_be_bytes(len.try_into().ok()?));
    let (text, rest) = rest.split_at_checked(len)?;
    Some((std::str::from_utf8(text).ok()?, rest))
}

/// The revision a state write gets: `None` when the key is not at `expected` (a conflict), 0
/// for a removal, else one above any handed out before, so that a removed and re-created key
/// never reuses a revision. Both the committer and the in-memory log follow it.
pub(super) fn next_revision(
    current: u64,
    expected: Option<u64>,
    removing: bool,
    last_revision: &mut u64,
) -> Option<u64> {
    if expected.is_some_and(|e| e != current) {
        return None;
    }
    if removing {
        return Some(0);
    }
    *last_revision = current.max(*last_revision) + 1;
    Some(*last_revision)
}

/// The revision a state record starts with.
pub(super) fn revision_of(record: &[u8]) -> Option<u64> {
    read_u64(record.get(..8)?)
}

pub(super) fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
