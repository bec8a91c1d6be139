//! Brotli, finished. Pingora 0.9's brotli encoder flushes at the end of a
//! body but never finishes the stream (it calls `flush`, not the writer's
//! close), so strict decoders report a truncated body. This is our own
//! streaming encoder on the same `brotli` crate: each chunk is flushed so
//! the response still streams, and the end of the body finishes the
//! stream. Pingora's module is kept for gzip and zstd (and for decoding
//! for clients that cannot take an upstream's encoding); its brotli level
//! is always 0.

use brotli::CompressorWriter;
use bytes::Bytes;
use std::io::Write;

/// The window (log2 bytes) Pingora uses: 512 KiB per stream.
const WINDOW_BITS: u32 = 19;
/// The encoder's input buffer.
const BUFFER: usize = 4096;

/// One response body being encoded as brotli.
pub struct BrotliStream {
    // Boxed: the encoder's state is several KiB, and the stream lives in
    // the request context, which Pingora moves into a boxed future.
    writer: Option<Box<CompressorWriter<Vec<u8>>>>,
}

impl std::fmt::Debug for BrotliStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrotliStream")
    }
}

impl BrotliStream {
    /// An encoder at `quality` (0–11).
    pub fn new(quality: u32) -> Self {
        Self {
            writer: Some(Box::new(CompressorWriter::new(
                Vec::new(),
                BUFFER,
                quality,
                WINDOW_BITS,
            ))),
        }
    }

    /// Encodes the next chunk; at `end`, also the stream's last block.
    /// What it returns can be sent at once (a flushed, decodable prefix).
    pub fn encode(&mut self, chunk: &[u8], end: bool) -> std::io::Result<Bytes> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(Bytes::new()); // already finished
        };
        writer.write_all(chunk)?;
        if end {
            let finished = self.writer.take().map(|w| w.into_inner());
            return Ok(finished.unwrap_or_default().into());
        }
        writer.flush()?;
        Ok(std::mem::take(writer.get_mut()).into())
    }
}

/// A whole body as one finished brotli stream (the cache's encoded copy).
pub fn encode_whole(quality: u32, body: &[u8]) -> std::io::Result<Bytes> {
    BrotliStream::new(quality).encode(body, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode_strictly(encoded: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::Decompressor::new(encoded, 4096)
            .read_to_end(&mut out)
            .expect("a complete brotli stream");
        out
    }

    #[test]
    fn streamed_chunks_make_one_complete_stream() {
        let body: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut stream = BrotliStream::new(4);
        let mut encoded = Vec::new();
        for chunk in body.chunks(7000) {
            let out = stream.encode(chunk, false).expect("encode");
            encoded.extend_from_slice(&out);
        }
        encoded.extend_from_slice(&stream.encode(&[], true).expect("finish"));
        assert_eq!(decode_strictly(&encoded), body);
        assert!(stream.encode(b"late", true).expect("after end").is_empty());
    }

    #[test]
    fn whole_bodies_small_and_empty_decode() {
        for body in [&b""[..], b"{}", &b"{\"items\":[1,2,3]}".repeat(300)] {
            let encoded = encode_whole(4, body).expect("encode");
            assert_eq!(decode_strictly(&encoded), body);
        }
    }
}
