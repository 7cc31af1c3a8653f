//! Fuzz target (bolero) for the SPDY/3.1 frame decoder, the first code to read a streaming
//! client's bytes: any input decodes to frames or stops with an error, never a panic, and a
//! decoder never holds more than the frame limits allow. Frames the encoder writes (with
//! arbitrary header names and values) decode to themselves.

use bytes::BytesMut;

use super::spdy::{Frame, FrameDecoder, FrameEncoder, MAX_CONTROL_FRAME};

/// Random inputs in a plain `cargo test` run (`BOLERO_RANDOM_ITERATIONS` overrides it).
const ITERATIONS: usize = 20_000;

/// Decodes `bytes` fed in `chunk`-sized pieces, as reads from a socket would come.
fn decode_all(bytes: &[u8], chunk: usize) -> Vec<Frame> {
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        // Each decoded frame consumes input: at most one frame per byte.
        for _ in 0..=buf.len() {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return frames,
            }
        }
        assert!(
            buf.len() <= MAX_CONTROL_FRAME + 8,
            "{} bytes held",
            buf.len()
        );
    }
    frames
}

#[test]
fn frames() {
    bolero::check!()
        .with_iterations(ITERATIONS)
        .for_each(|bytes: &[u8]| {
            let chunk = bytes.first().map_or(1, |b| usize::from(*b % 17) + 1);
            decode_all(bytes, chunk);
        });
}

#[test]
fn encoded_header_blocks_decode_to_themselves() {
    bolero::check!()
        .with_iterations(ITERATIONS / 4)
        .with_type::<(u32, Vec<(String, String)>)>()
        .for_each(|(id, headers)| {
            let headers: Vec<(String, String)> = headers
                .iter()
                .filter(|(n, _)| !n.is_empty())
                .map(|(n, v)| (n.to_ascii_lowercase(), v.replace('\0', "")))
                .take(16)
                .collect();
            let frame = Frame::SynStream {
                stream_id: (id & 0x7fff_ffff) | 1,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers,
            };
            let mut out = BytesMut::new();
            if FrameEncoder::default().encode(&frame, &mut out).is_err() {
                return;
            }
            let decoded = decode_all(&out, out.len());
            assert_eq!(decoded, vec![frame]);
        });
}
