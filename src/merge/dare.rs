//! DARE's Bernoulli masks: one [`Rng`] stream per (seed, tensor name, input,
//! block of [`DARE_BLOCK`] elements), so the mask of an element depends on
//! nothing else: not on tensor order, chunking or thread count.

use crate::rng::Rng;

/// Elements per mask stream. Part of the definition of the mask: changing it
/// changes every seeded DARE merge.
pub const DARE_BLOCK: usize = 1 << 15;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of the tensor name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The stream for one block of one input's tensor.
pub(crate) fn block_rng(seed: u64, name: &str, input: usize, block: usize) -> Rng {
    let mut s = splitmix(seed);
    s = splitmix(s ^ name_hash(name));
    s = splitmix(s ^ input as u64);
    s = splitmix(s ^ block as u64);
    Rng::new(s)
}

/// Whether element `j` (in block order) is kept: one draw per element, kept when
/// the uniform draw in [0, 1) is below `density`.
#[inline]
pub(crate) fn keep(rng: &mut Rng, density: f64) -> bool {
    rng.next_f64() < density
}

/// DARE's keep mask for input `input` of tensor `name` with `len` elements:
/// element j is kept when the (j mod DARE_BLOCK)-th draw of
/// `Rng::new(stream(seed, name, input, j / DARE_BLOCK))` (uniform in [0, 1)) is
/// below `density`. This is the mask [`super::Method::Dare`] applies (for
/// density < 1; density ≥ 1 keeps everything).
pub fn dare_keep_mask(seed: u64, name: &str, input: usize, density: f64, len: usize) -> Vec<bool> {
    let mut out = Vec::with_capacity(len);
    for block in 0..len.div_ceil(DARE_BLOCK) {
        let mut rng = block_rng(seed, name, input, block);
        let m = DARE_BLOCK.min(len - block * DARE_BLOCK);
        out.extend((0..m).map(|_| keep(&mut rng, density)));
    }
    out
}
