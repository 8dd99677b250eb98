/**
 * Framing (PROTOCOL.md §2): a big-endian u32 body length, then the body. The length of an
 * incoming frame is checked against the maximum before any of its body is buffered.
 *
 * @module
 */

import { writeClientMessage } from "./codec.js";
import { localError, ProtocolError } from "./errors.js";
import type { ClientMessage } from "./types.js";
import { Writer } from "./wire.js";

/** Bytes in the length prefix. */
export const PREFIX_LEN = 4;
/** Largest body either side accepts before the handshake. */
export const HANDSHAKE_MAX_FRAME_LEN = 64 * 1024;
/** Largest body this client accepts after the handshake unless told otherwise (16 MiB). */
export const DEFAULT_MAX_FRAME_LEN = 16 * 1024 * 1024;
/** The protocol's ceiling for any negotiated maximum (64 MiB). */
export const ABSOLUTE_MAX_FRAME_LEN = 64 * 1024 * 1024;

/** One whole frame (prefix and body) for `message`; refused with `TooLargeError` over `maxLen`. */
export function encodeFrame(message: ClientMessage, maxLen: number): Uint8Array {
  const writer = new Writer();
  writer.raw(new Uint8Array(PREFIX_LEN));
  writeClientMessage(writer, message);
  const bodyLen = writer.length - PREFIX_LEN;
  if (bodyLen > maxLen) {
    throw localError("TooLarge", `request frame of ${bodyLen} bytes exceeds the daemon's maximum of ${maxLen} bytes`);
  }
  writer.patchU32BE(0, bodyLen);
  return writer.bytes();
}

/**
 * Splits a byte stream into frame bodies. Throws `ProtocolError` as soon as a prefix
 * announces a body over `maxLen`, before buffering it.
 */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Body length of the frame in progress, once its prefix has been read. */
  private expected = -1;

  constructor(public maxLen: number) {}

  /** Bytes received and not yet returned as a body (a partial frame at end of stream). */
  get pendingBytes(): number {
    return this.buffered + (this.expected >= 0 ? PREFIX_LEN : 0);
  }

  /** Takes `chunk`; returns the bodies it completed, in order. */
  push(chunk: Uint8Array): Uint8Array[] {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const bodies: Uint8Array[] = [];
    for (;;) {
      if (this.expected < 0) {
        if (this.buffered < PREFIX_LEN) break;
        const prefix = this.take(PREFIX_LEN);
        const length = new DataView(prefix.buffer, prefix.byteOffset, PREFIX_LEN).getUint32(0, false);
        if (length > this.maxLen) {
          throw new ProtocolError(`the daemon sent a frame of ${length} bytes, over the maximum of ${this.maxLen} bytes`);
        }
        this.expected = length;
      }
      if (this.buffered < this.expected) break;
      bodies.push(this.take(this.expected));
      this.expected = -1;
    }
    return bodies;
  }

  /** The next `count` buffered bytes (a view when they lie in one chunk). */
  private take(count: number): Uint8Array {
    let out: Uint8Array;
    const first = this.chunks[0];
    if (count === 0) {
      out = new Uint8Array(0);
    } else if (first !== undefined && first.length >= count) {
      out = first.subarray(0, count);
      if (first.length === count) this.chunks.shift();
      else this.chunks[0] = first.subarray(count);
    } else {
      out = new Uint8Array(count);
      let filled = 0;
      while (filled < count) {
        const chunk = this.chunks[0]!;
        const part = Math.min(chunk.length, count - filled);
        out.set(chunk.subarray(0, part), filled);
        filled += part;
        if (part === chunk.length) this.chunks.shift();
        else this.chunks[0] = chunk.subarray(part);
      }
    }
    this.buffered -= count;
    return out;
  }
}
