//! Decoding a gzip or brotli body for a client that cannot take the
//! coding, in bounded memory whatever the body's ratio.
//!
//! Pingora's decompressors turn each input chunk into all of its output at
//! once (pingora-core `protocols/http/compression`): a 64 KiB chunk of a
//! gzip bomb is 64 MiB in one allocation, and 1 MiB of brotli can stand
//! for gigabytes. Ours is written on the decoders' streaming interfaces
//! (flate2's raw `Decompress`, brotli's `BrotliDecompressStream`), which
//! stop when the output buffer is full: one call yields at most
//! [`MAX_OUTPUT_PER_CALL`], and the compressed input not yet decoded is
//! held (at most [`MAX_HELD_INPUT`]). The fresh-hit path drains a stored
//! body in such slices, writing each before the next; Pingora's body
//! filter gives one output per upstream chunk, so a body that keeps
//! inflating faster than that bound allows is cut there rather than
//! inflated whole (nginx's gunzip filter works in fixed buffers the same
//! way). Memory per request: the bounds above plus the decoder's window
//! (32 KiB for gzip, at most 16 MiB for brotli, whose large-window
//! extension is refused).

use bytes::{Buf, Bytes, BytesMut};

/// Most decoded bytes one call returns. Pingora batches up to five body
/// chunks through the filter before writing them, so this times five is
/// the decoded bytes one response can hold at once.
pub const MAX_OUTPUT_PER_CALL: usize = 1024 * 1024;
/// Most compressed bytes held undecoded between calls: a body whose ratio
/// stays above ~16:1 per 64 KiB read falls behind by this much before it
/// is cut (a 25:1 body after some 250 MiB decoded).
pub const MAX_HELD_INPUT: usize = 4 * 1024 * 1024;
/// Most decoded bytes the last call of a streamed body may return: what a
/// body that fell behind still owes at its end. A body projected (from its
/// ratio so far) to owe more is refused before any of it is decoded.
pub const MAX_OUTPUT_AT_END: usize = 4 * 1024 * 1024;

/// Why a body could not be decoded within the bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// The body inflates faster than the bounds allow streaming it.
    TooExpansive,
    /// Not a valid stream of its coding, or cut short.
    Corrupt(String),
}

impl std::fmt::Display for InflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InflateError::TooExpansive => write!(
                f,
                "the body inflates past {MAX_OUTPUT_PER_CALL} bytes per read with {MAX_HELD_INPUT} bytes held"
            ),
            InflateError::Corrupt(why) => write!(f, "corrupt compressed body: {why}"),
        }
    }
}

/// The codings tollgate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` (or `x-gzip`).
    Gzip,
    /// `br`.
    Brotli,
}

impl Coding {
    /// The coding a `Content-Encoding` value names, when it is one we decode.
    pub fn of(content_encoding: &[u8]) -> Option<Coding> {
        let value = content_encoding.trim_ascii();
        if value.eq_ignore_ascii_case(b"gzip") || value.eq_ignore_ascii_case(b"x-gzip") {
            Some(Coding::Gzip)
        } else if value.eq_ignore_ascii_case(b"br") {
            Some(Coding::Brotli)
        } else {
            None
        }
    }

    /// Its `Accept-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        }
    }
}

type BrotliState = brotli::BrotliState<
    brotli::enc::StandardAlloc,
    brotli::enc::StandardAlloc,
    brotli::enc::StandardAlloc,
>;

enum Decoder {
    Gzip {
        header_done: bool,
        inflate: flate2::Decompress,
    },
    Brotli(Box<BrotliState>),
}

/// One body's decoder, with the compressed input it has not decoded yet.
pub struct InflateStream {
    decoder: Decoder,
    held: BytesMut,
    finished: bool,
    /// Where each step decodes to, made on the first call.
    scratch: Option<Box<[u8]>>,
    /// Compressed bytes decoded and bytes they decoded to: the ratio.
    decoded_in: usize,
    decoded_out: usize,
}

/// The scratch buffer's size: what one decoder step may produce.
const SCRATCH: usize = 64 * 1024;

impl InflateStream {
    /// A decoder for a body in `coding`.
    pub fn new(coding: Coding) -> Self {
        let decoder = match coding {
            Coding::Gzip => Decoder::Gzip {
                header_done: false,
                inflate: flate2::Decompress::new(false),
            },
            Coding::Brotli => Decoder::Brotli(Box::new(BrotliState::new_strict(
                Default::default(),
                Default::default(),
                Default::default(),
            ))),
        };
        Self {
            decoder,
            held: BytesMut::new(),
            finished: false,
            scratch: None,
            decoded_in: 0,
            decoded_out: 0,
        }
    }

    /// Takes `input` and returns what it decodes to, at most
    /// [`MAX_OUTPUT_PER_CALL`] bytes; the rest stays held for the next call.
    pub fn feed(&mut self, input: &[u8]) -> Result<Bytes, InflateError> {
        self.feed_up_to(input, MAX_OUTPUT_PER_CALL)
    }

    /// `feed` with its own bound on the output.
    fn feed_up_to(&mut self, input: &[u8], limit: usize) -> Result<Bytes, InflateError> {
        if !self.finished {
            self.held.extend_from_slice(input);
        }
        // Decoded through a scratch buffer made once per body, and grown
        // exactly: a doubling buffer would hold up to twice the bound, and
        // keep it alive in the `Bytes` it becomes.
        let scratch = self
            .scratch
            .get_or_insert_with(|| vec![0; SCRATCH].into_boxed_slice());
        let mut out: Vec<u8> = Vec::new();
        while !self.finished && out.len() < limit {
            let room = (limit - out.len()).min(SCRATCH);
            let (consumed, produced) = step(
                &mut self.decoder,
                &self.held,
                &mut scratch[..room],
                &mut self.finished,
            )?;
            out.reserve_exact(produced);
            out.extend_from_slice(&scratch[..produced]);
            self.held.advance(consumed);
            self.decoded_in += consumed;
            self.decoded_out += produced;
            if consumed == 0 && produced == 0 {
                break; // needs more input
            }
        }
        if self.finished {
            self.held.clear(); // a gzip trailer, or bytes after the stream
        }
        Ok(Bytes::from(out))
    }

    /// For Pingora's body filter, which gives one output per upstream
    /// chunk: `feed`, then refuse a body that holds more than
    /// [`MAX_HELD_INPUT`] undecoded, or that ends (`end`) owing more than
    /// [`MAX_OUTPUT_AT_END`] — it could only be inflated whole.
    pub fn feed_chunk(&mut self, input: &[u8], end: bool) -> Result<Bytes, InflateError> {
        let limit = if end {
            MAX_OUTPUT_AT_END
        } else {
            MAX_OUTPUT_PER_CALL
        };
        let out = self.feed_up_to(input, limit)?;
        if self.held.len() > MAX_HELD_INPUT || (end && !self.finished && out.len() >= limit) {
            return Err(InflateError::TooExpansive);
        }
        if end && !self.finished {
            return Err(InflateError::Corrupt("the stream ends early".to_owned()));
        }
        Ok(out)
    }

    /// Whether the whole stream was decoded.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether compressed input is held, still to decode.
    pub fn has_held_input(&self) -> bool {
        !self.held.is_empty()
    }
}

/// Decodes from `held` into `out`: bytes consumed and bytes produced;
/// `finished` is set at the end of the stream.
fn step(
    decoder: &mut Decoder,
    held: &[u8],
    out: &mut [u8],
    finished: &mut bool,
) -> Result<(usize, usize), InflateError> {
    match decoder {
        Decoder::Gzip {
            header_done,
            inflate,
        } => {
            if !*header_done {
                return match gzip_header_len(held)? {
                    Some(len) => {
                        *header_done = true;
                        Ok((len, 0))
                    }
                    None => Ok((0, 0)),
                };
            }
            let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
            let status = inflate
                .decompress(held, out, flate2::FlushDecompress::None)
                .map_err(|e| InflateError::Corrupt(e.to_string()))?;
            if status == flate2::Status::StreamEnd {
                *finished = true;
            }
            let consumed = usize::try_from(inflate.total_in() - before_in).unwrap_or(0);
            let produced = usize::try_from(inflate.total_out() - before_out).unwrap_or(0);
            Ok((consumed, produced))
        }
        Decoder::Brotli(state) => {
            let (mut available_in, mut input_offset) = (held.len(), 0usize);
            let (mut available_out, mut output_offset, mut total) = (out.len(), 0usize, 0usize);
            let result = brotli::BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                held,
                &mut available_out,
                &mut output_offset,
                out,
                &mut total,
                state,
            );
            match result {
                brotli::BrotliResult::ResultSuccess => *finished = true,
                brotli::BrotliResult::ResultFailure => {
                    return Err(InflateError::Corrupt("invalid brotli stream".to_owned()))
                }
                brotli::BrotliResult::NeedsMoreInput | brotli::BrotliResult::NeedsMoreOutput => {}
            }
            Ok((input_offset, output_offset))
        }
    }
}

/// The length of the gzip member header at the start of `input` (RFC 1952
/// §2.3), or `None` while it has not all arrived.
fn gzip_header_len(input: &[u8]) -> Result<Option<usize>, InflateError> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    if input.len() < 10 {
        return Ok(None);
    }
    if input[0] != 0x1f || input[1] != 0x8b || input[2] != 8 {
        return Err(InflateError::Corrupt("not a gzip stream".to_owned()));
    }
    let flags = input[3];
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(len) = input.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match input
                .get(at..)
                .and_then(|rest| rest.iter().position(|b| *b == 0))
            {
                Some(end) => at += end + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((input.len() >= at).then_some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
            w.write_all(data).expect("brotli");
        }
        out
    }

    /// Decodes in the filter's way: chunk by chunk, one output each.
    fn through_filter(coding: Coding, body: &[u8], chunk: usize) -> Result<Vec<u8>, InflateError> {
        let mut stream = InflateStream::new(coding);
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
        for (i, piece) in chunks.iter().enumerate() {
            out.extend_from_slice(&stream.feed_chunk(piece, i + 1 == chunks.len())?);
        }
        Ok(out)
    }

    #[test]
    fn ordinary_bodies_decode_whole_in_any_chunking() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
            .collect();
        let (gz, br) = (gzip(&text), brotli(&text));
        for chunk in [1, 7, 100, 4096, 65536] {
            for (coding, body) in [(Coding::Gzip, &gz), (Coding::Brotli, &br)] {
                let decoded = through_filter(coding, body, chunk);
                let len = decoded.as_ref().map(Vec::len).map_err(Clone::clone);
                assert_eq!(len, Ok(text.len()), "{coding:?} in chunks of {chunk}");
                assert!(
                    decoded.is_ok_and(|d| d == text),
                    "{coding:?} in chunks of {chunk}"
                );
            }
        }
    }

    /// 1 MiB of zeros a thousand times over: never more than the bound in
    /// one output, and refused rather than inflated.
    #[test]
    fn a_bomb_is_refused_within_the_bounds() {
        let zeros = vec![0u8; 64 * 1024 * 1024];
        for (coding, body) in [
            (Coding::Gzip, gzip(&zeros)),
            (Coding::Brotli, brotli(&zeros)),
        ] {
            let mut stream = InflateStream::new(coding);
            let mut refused = false;
            let chunks: Vec<&[u8]> = body.chunks(64 * 1024).collect();
            for (i, piece) in chunks.iter().enumerate() {
                match stream.feed_chunk(piece, i + 1 == chunks.len()) {
                    Ok(out) => assert!(out.len() <= MAX_OUTPUT_PER_CALL),
                    Err(e) => {
                        assert_eq!(e, InflateError::TooExpansive, "{coding:?}");
                        refused = true;
                        break;
                    }
                }
            }
            assert!(refused, "{coding:?}: {} bytes of input", body.len());
        }
    }

    #[test]
    fn draining_a_stored_body_in_slices_yields_it_all() {
        let zeros = vec![0u8; 20 * 1024 * 1024];
        let body = gzip(&zeros);
        let mut stream = InflateStream::new(Coding::Gzip);
        let mut total = 0;
        for piece in body.chunks(16 * 1024) {
            let mut out = stream.feed(piece).expect("decodes");
            loop {
                assert!(out.len() <= MAX_OUTPUT_PER_CALL);
                total += out.len();
                if out.is_empty() || !stream.has_held_input() {
                    break;
                }
                out = stream.feed(&[]).expect("decodes");
            }
        }
        while !stream.finished() {
            let out = stream.feed(&[]).expect("decodes");
            assert!(!out.is_empty(), "progress until finished");
            total += out.len();
        }
        assert_eq!(total, zeros.len());
    }

    #[test]
    fn corrupt_streams_are_errors() {
        assert!(matches!(
            through_filter(Coding::Gzip, b"not gzip at all", 4),
            Err(InflateError::Corrupt(_))
        ));
        let mut cut = gzip(b"hello world hello world");
        cut.truncate(cut.len() - 12);
        assert!(through_filter(Coding::Gzip, &cut, 5).is_err());
    }
}
