//! Two E2M1 codes per byte along the contiguous (K) axis.

/// Which nibble of a byte holds the even element.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NibbleOrder {
    /// Element `2i` in bits 3..0 of byte `i`: PyTorch `float4_e2m1fn_x2`, ModelOpt, TensorRT-LLM,
    /// CUTLASS, vLLM, compressed-tensors, and what `cvt.rn.satfinite.e2m1x2.f32` produces.
    #[default]
    LowFirst,
    /// Element `2i` in bits 7..4: comfy-kitchen's default (`hi_first=True`), hence ComfyUI files.
    HighFirst,
}

/// Packs one pair of codes (low 4 bits of each) into a byte.
#[inline]
pub const fn pack_pair(even: u8, odd: u8, order: NibbleOrder) -> u8 {
    match order {
        NibbleOrder::LowFirst => (even & 0xF) | (odd << 4),
        NibbleOrder::HighFirst => (odd & 0xF) | (even << 4),
    }
}

/// Unpacks a byte into its (even, odd) codes.
#[inline]
pub const fn unpack_pair(byte: u8, order: NibbleOrder) -> (u8, u8) {
    match order {
        NibbleOrder::LowFirst => (byte & 0xF, byte >> 4),
        NibbleOrder::HighFirst => (byte >> 4, byte & 0xF),
    }
}

/// Swaps the nibbles of a byte: converts between the two orders.
#[inline]
pub const fn swap_nibbles(byte: u8) -> u8 {
    byte.rotate_left(4)
}

/// Packs `codes` (an even number of them) into `out` (`codes.len() / 2` bytes).
///
/// Returns `false`, writing nothing, when the lengths do not fit together.
pub fn pack(codes: &[u8], out: &mut [u8], order: NibbleOrder) -> bool {
    if codes.len() % 2 != 0 || out.len() * 2 != codes.len() {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(codes.chunks_exact(2)) {
        *o = pack_pair(pair[0], pair[1], order);
    }
    true
}

/// Unpacks `packed` into `out` (`2 * packed.len()` codes). Returns `false`, writing nothing, when the
/// lengths do not fit together.
pub fn unpack(packed: &[u8], out: &mut [u8], order: NibbleOrder) -> bool {
    if out.len() != packed.len() * 2 {
        return false;
    }
    for (pair, &b) in out.chunks_exact_mut(2).zip(packed) {
        let (e, o) = unpack_pair(b, order);
        pair[0] = e;
        pair[1] = o;
    }
    true
}

/// Converts packed bytes between nibble orders in place (the conversion is its own inverse).
pub fn swap_all(packed: &mut [u8]) {
    for b in packed {
        *b = swap_nibbles(*b);
    }
}
