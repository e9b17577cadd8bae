//! What the bytes of an inbox segment hold: whole frames, and damaged spans between them.
//!
//! A frame is `length: u32 LE`, `crc32(payload): u32 LE`, `payload`. It is **whole** when its
//! length is at least 1 (a record is never empty: eight zero bytes, which zeroed disk blocks are
//! full of, would otherwise be a valid empty frame), its payload fits in the data, and its
//! checksum matches. Anything else where a frame should start begins a **damaged span**, which
//! ends
//! - right after its own frame, when the length is plausible and a whole frame (or the end of the
//!   data) follows there: only the payload or checksum was hit;
//! - otherwise at the next offset where a whole frame starts, or at the end of the data.
//!
//! A span is counted as the records it seems to have held ([`Span::records`]): one per frame its
//! surviving lengths lead through, plus one for what is left after them.
//!
//! Invariant: all of this is a function of the bytes alone, so every reader, and every restart,
//! finds the same spans with the same counts.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The frame header: length and checksum.
pub(super) const HEADER: usize = 8;

/// What a segment holds at an offset.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    /// A whole record: its payload (the frame takes [`framed_len`] bytes).
    Whole(Vec<u8>),
    /// Bytes that are no whole record.
    Damaged(Span),
    /// The end of the data.
    End,
}

/// A damaged span (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    /// The offset where it ends: where a whole frame starts, or the end of the data.
    pub(super) until: u64,
    /// How many records it seems to have held (at least 1).
    pub(super) records: u64,
    /// What is wrong with its first frame.
    pub(super) why: &'static str,
}

/// Appends one framed record to `buf`.
pub(super) fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("records are far smaller than 4 GiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// How many bytes the frame of `payload` takes.
pub(super) fn framed_len(payload: &[u8]) -> u64 {
    (HEADER + payload.len()) as u64
}

/// What `file` holds at `offset`, its data ending at `end`.
pub(super) fn frame_at(file: &File, offset: u64, end: u64) -> io::Result<Frame> {
    if offset >= end {
        return Ok(Frame::End);
    }
    let why = match whole_at(file, offset, end)? {
        Ok(payload) => return Ok(Frame::Whole(payload)),
        Err(why) => why,
    };
    let rest = read_range(file, offset, end)?;
    let (len, records) = span_in(&rest);
    Ok(Frame::Damaged(Span {
        until: offset + len as u64,
        records,
        why,
    }))
}

/// Reads the bytes from `from` to `to`.
pub(super) fn read_range(file: &File, from: u64, to: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(to - from).map_err(io::Error::other)?;
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, from)?;
    Ok(bytes)
}

/// The payload of the frame at `offset` if it is whole, else what is wrong with it.
fn whole_at(file: &File, offset: u64, end: u64) -> io::Result<Result<Vec<u8>, &'static str>> {
    if end - offset < HEADER as u64 {
        return Ok(Err("the frame's header is cut off"));
    }
    let mut header = [0; HEADER];
    file.read_exact_at(&mut header, offset)?;
    let (len, crc) = parse_header(&header);
    if len == 0 {
        return Ok(Err("the frame's length is 0"));
    }
    if (end - offset - HEADER as u64) < len as u64 {
        return Ok(Err("the frame's length runs past the end of the file"));
    }
    let mut payload = vec![0; len];
    file.read_exact_at(&mut payload, offset + HEADER as u64)?;
    Ok(if crc32fast::hash(&payload) == crc {
        Ok(payload)
    } else {
        Err("the frame's checksum does not match its payload")
    })
}

fn parse_header(header: &[u8]) -> (usize, u32) {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..HEADER].try_into().expect("4 bytes"));
    (len as usize, crc)
}

/// The length in the header at `at` of `data`, if it is plausible: at least 1, and the frame
/// fits in `data`.
fn plausible_len(data: &[u8], at: usize) -> Option<usize> {
    let header = data.get(at..at + HEADER)?;
    let (len, _) = parse_header(header);
    (len >= 1 && len <= data.len() - at - HEADER).then_some(len)
}

/// Whether a whole frame starts at `at` of `data`.
fn is_whole(data: &[u8], at: usize) -> bool {
    plausible_len(data, at).is_some_and(|len| {
        let (_, crc) = parse_header(&data[at..at + HEADER]);
        crc32fast::hash(&data[at + HEADER..at + HEADER + len]) == crc
    })
}

/// Where the damaged span at the start of `data` (which runs to the end of the segment's data)
/// ends, and how many records it seems to have held.
pub(super) fn span_in(data: &[u8]) -> (usize, u64) {
    if let Some(len) = plausible_len(data, 0) {
        let after = HEADER + len;
        if after == data.len() || is_whole(data, after) {
            return (after, 1);
        }
    }
    let until = (1..data.len())
        .find(|&at| is_whole(data, at))
        .unwrap_or(data.len());
    (until, records_in(&data[..until]))
}

/// How many records a damaged span seems to have held: one per frame its lengths lead through,
/// plus one for what is left after them.
fn records_in(span: &[u8]) -> u64 {
    let (mut at, mut records) = (0, 0);
    while at < span.len() {
        records += 1;
        match plausible_len(span, at) {
            Some(len) => at += HEADER + len,
            None => break,
        }
    }
    records.max(1)
}

/// The record that bytes kept in the quarantine hold: the payload of the whole frame they start
/// with; else, when only the length was hit (the rest matches the header's checksum), everything
/// after the header; else the bytes themselves (as an operator who repaired them may have left
/// them: a bare record). Also says whether they were a frame.
pub(crate) fn recover_payload(kept: &[u8]) -> (&[u8], bool) {
    if let Some(len) = plausible_len(kept, 0) {
        if is_whole(kept, 0) {
            return (&kept[HEADER..HEADER + len], true);
        }
    }
    if kept.len() > HEADER {
        let (_, crc) = parse_header(&kept[..HEADER]);
        if crc32fast::hash(&kept[HEADER..]) == crc {
            return (&kept[HEADER..], true);
        }
    }
    (kept, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for payload in payloads {
            frame(&mut buf, payload);
        }
        buf
    }

    #[test]
    fn a_span_whose_length_survived_is_exactly_its_frame() {
        let mut data = framed(&[b"first record", b"second"]);
        data[HEADER + 3] ^= 0xff;
        assert_eq!(span_in(&data), (HEADER + 12, 1));
        // The last frame of the data: the end follows it.
        let mut data = framed(&[b"only record"]);
        data[HEADER] ^= 1;
        assert_eq!(span_in(&data), (data.len(), 1));
    }

    #[test]
    fn a_span_with_a_damaged_length_reaches_the_next_whole_frame() {
        let mut data = framed(&[b"first record", b"second"]);
        data[..4].copy_from_slice(&9_999u32.to_le_bytes());
        assert_eq!(span_in(&data), (HEADER + 12, 1));
        // Zeroed: an empty frame is no frame.
        let mut data = framed(&[b"first record", b"second"]);
        data[..HEADER + 12].fill(0);
        assert_eq!(span_in(&data), (HEADER + 12, 1));
    }

    #[test]
    fn a_span_over_a_frame_boundary_counts_the_records_its_lengths_show() {
        let mut data = framed(&[b"first record", b"second record", b"third"]);
        // The end of the first payload and the second header.
        let second = HEADER + 12;
        data[second - 3..second + 5].fill(0xee);
        let third = second + HEADER + 13;
        assert_eq!(span_in(&data), (third, 2));
    }

    #[test]
    fn garbage_to_the_end_is_one_span() {
        let mut data = framed(&[b"a record"]);
        data.extend_from_slice(&[0xab; 40]);
        assert_eq!(span_in(&data[HEADER + 8..]), (40, 1));
        assert_eq!(span_in(&[0; 5]), (5, 1));
    }

    #[test]
    fn kept_bytes_give_back_their_record() {
        let whole = framed(&[b"payload"]);
        assert_eq!(recover_payload(&whole), (&b"payload"[..], true));
        let mut length_hit = whole.clone();
        length_hit[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(recover_payload(&length_hit), (&b"payload"[..], true));
        let mut payload_hit = whole.clone();
        payload_hit[HEADER + 1] = b'X';
        assert_eq!(recover_payload(&payload_hit), (&payload_hit[..], false));
        let bare = b"{\"bare\":1}";
        assert_eq!(recover_payload(bare), (&bare[..], false));
    }
}
