//! `data shapes`: a generated vision dataset for segmentation, presence detection and
//! classification that needs no download.
//!
//! Each example is an S×S RGB image (U8) of 1–3 flat-coloured shapes of [`KINDS`] on a
//! textured background: a linear gradient between two random colours, plus (usually) stripes
//! or a checkerboard in a third colour, plus per-pixel noise (±[`NOISE`]) over everything,
//! shapes included, so a pixel's colour alone does not tell shape from background.
//!
//! - Rasterisation uses integer rules on pixel offsets from the shape's centre pixel
//!   ([`Kind::contains`]), no anti-aliasing: a pixel is either the shape's or not, so masks
//!   are exact. Shapes never overlap: their bounding boxes keep at least one pixel apart,
//!   so every shape is one connected component of the mask (8-connectivity).
//! - `seg` and `det` draw the same scenes (one seed: the same images): 1–3 shapes of
//!   uniform kinds, radius max(S/16, 4)..max(S/5, 5) (a shape that finds no room after 64
//!   tries is left out). `cls` draws one main shape of a uniformly drawn kind (radius
//!   max(3S/20, 5)..max(S/4, 6)) and 0–2 distractors of radius 4..max(S/10, 4), each with
//!   fewer pixels than the main one: the label is the kind of the largest shape.
//! - Every number comes from integer arithmetic and [`crate::rng::Rng`]; example i draws
//!   from its own stream (seed, i), so the bytes depend on the seed alone (not on threads),
//!   and `-n 100` is the first 100 examples of `-n 1000`.

use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use rayon::prelude::*;

/// The shape kinds, in label order (column k of `det`, class k of `cls`).
pub const KINDS: [&str; 5] = ["circle", "square", "triangle", "cross", "diamond"];

/// Per-pixel noise amplitude, in grey levels.
pub const NOISE: i32 = 12;

/// The smallest image side that leaves room for three shapes.
pub const MIN_SIZE: usize = 16;

/// One of [`KINDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind(pub usize);

impl Kind {
    /// Whether the pixel at offset (dx, dy) from the centre pixel belongs to a shape of
    /// radius r (its bounding box is always (2r+1)×(2r+1), centred).
    pub fn contains(self, dx: i64, dy: i64, r: i64) -> bool {
        let (ax, ay) = (dx.abs(), dy.abs());
        if ax > r || ay > r {
            return false;
        }
        match self.0 {
            // r² + r: a rounder disc than r² (no lone pixels at the four tips).
            0 => dx * dx + dy * dy <= r * r + r,
            1 => true,
            // Apex up, base the full width of the box.
            2 => 2 * ax <= dy + r,
            3 => {
                let t = (r / 3).max(1);
                ax <= t || ay <= t
            }
            _ => ax + ay <= r,
        }
    }

    /// Pixels of a shape of radius r.
    pub fn area(self, r: i64) -> usize {
        let mut a = 0;
        for dy in -r..=r {
            for dx in -r..=r {
                a += self.contains(dx, dy, r) as usize;
            }
        }
        a
    }
}

/// One drawn shape: kind, centre pixel (x, y), radius, colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub kind: Kind,
    pub x: i64,
    pub y: i64,
    pub r: i64,
    pub rgb: [u8; 3],
}

impl Shape {
    pub fn contains(&self, x: i64, y: i64) -> bool {
        self.kind.contains(x - self.x, y - self.y, self.r)
    }

    /// Bounding boxes at least one pixel apart.
    fn clear_of(&self, o: &Shape) -> bool {
        let gap = self.r + o.r + 2;
        (self.x - o.x).abs() >= gap || (self.y - o.y).abs() >= gap
    }
}

/// Which targets to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// `[N, S, S]` U8: 1 on every shape pixel, 0 elsewhere.
    Seg,
    /// `[N, K]` U8 multi-hot: kind k present (K = [`KINDS`].len(), or padded to `labels`).
    Det,
    /// `[N]` class ids: the kind of the largest shape.
    Cls,
}

/// One generated example.
#[derive(Clone, Debug)]
pub struct Scene {
    pub size: usize,
    pub shapes: Vec<Shape>,
    /// The background before the shapes and the noise: `[S, S, 3]` interleaved.
    pub background: Vec<u8>,
    /// The noise added to every pixel and channel, `[S, S, 3]`.
    pub noise: Vec<i8>,
}

fn colour(rng: &mut Rng) -> [i64; 3] {
    [0; 3].map(|_: i64| rng.below(256) as i64)
}

fn between(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo + 1) as u64) as i64
}

/// The textured background: gradient, then stripes or a checkerboard (or neither).
fn background(rng: &mut Rng, s: usize) -> Vec<u8> {
    let (c0, c1, c2) = (colour(rng), colour(rng), colour(rng));
    // Integer direction (not both zero) and its range over the image, for the gradient.
    let (gx, gy) = loop {
        let g = (between(rng, -4, 4), between(rng, -4, 4));
        if g != (0, 0) {
            break g;
        }
    };
    let m = s as i64 - 1;
    let proj = |x: i64, y: i64| gx * x + gy * y;
    let corners = [proj(0, 0), proj(m, 0), proj(0, m), proj(m, m)];
    let (lo, hi) = (
        *corners.iter().min().unwrap(),
        *corners.iter().max().unwrap(),
    );
    let span = (hi - lo).max(1);
    let pattern = rng.below(5); // 0, 1: stripes; 2, 3: checker; 4: plain gradient
    let (sx, sy) = [(1, 0), (0, 1), (1, 1), (1, -1)][rng.below(4) as usize];
    let period = between(rng, 3, 10);
    let alpha = between(rng, 64, 160); // of 256: how much of c2 the pattern mixes in
    let mut out = vec![0u8; s * s * 3];
    for y in 0..s as i64 {
        for x in 0..s as i64 {
            let t = proj(x, y) - lo;
            let on = match pattern {
                0 | 1 => (sx * x + sy * y).rem_euclid(2 * period) < period,
                2 | 3 => ((x / period) + (y / period)) % 2 == 0,
                _ => false,
            };
            for ch in 0..3 {
                let g = (c0[ch] * (span - t) + c1[ch] * t) / span;
                let v = if on {
                    (g * (256 - alpha) + c2[ch] * alpha) / 256
                } else {
                    g
                };
                out[((y * s as i64 + x) * 3) as usize + ch] = v as u8;
            }
        }
    }
    out
}

/// A shape colour that stands apart from the background under the shape's centre (L1
/// distance ≥ 96 after up to 16 tries), so the task is learnable.
fn shape_colour(rng: &mut Rng, bg: &[u8], s: usize, x: i64, y: i64) -> [u8; 3] {
    let at = (y as usize * s + x as usize) * 3;
    let mut c = colour(rng);
    for _ in 0..16 {
        let d: i64 = (0..3).map(|ch| (c[ch] - bg[at + ch] as i64).abs()).sum();
        if d >= 96 {
            break;
        }
        c = colour(rng);
    }
    c.map(|v| v as u8)
}

/// Places a shape of `kind` with a radius in `radii` clear of `placed`; `None` after 64 tries.
fn place(
    rng: &mut Rng,
    s: usize,
    kind: Kind,
    radii: (i64, i64),
    placed: &[Shape],
    max_area: Option<usize>,
) -> Option<(i64, i64, i64)> {
    for _ in 0..64 {
        let r = between(rng, radii.0, radii.1);
        if max_area.is_some_and(|m| kind.area(r) >= m) {
            continue;
        }
        let x = between(rng, r, s as i64 - 1 - r);
        let y = between(rng, r, s as i64 - 1 - r);
        let cand = Shape {
            kind,
            x,
            y,
            r,
            rgb: [0; 3],
        };
        if placed.iter().all(|p| cand.clear_of(p)) {
            return Some((x, y, r));
        }
    }
    None
}

impl Scene {
    /// Example `index` of the dataset drawn with `seed`.
    pub fn generate(seed: u64, index: u64, size: usize, task: Task) -> Scene {
        let mut rng = Rng::new(seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let s = size as i64;
        let bg = background(&mut rng, size);
        let k = KINDS.len() as u64;
        let mut shapes: Vec<Shape> = Vec::new();
        let add = |rng: &mut Rng, kind: Kind, radii, max_area, shapes: &mut Vec<Shape>| {
            let (x, y, r) = place(rng, size, kind, radii, shapes, max_area)?;
            let rgb = shape_colour(rng, &bg, size, x, y);
            shapes.push(Shape { kind, x, y, r, rgb });
            Some(kind.area(r))
        };
        match task {
            Task::Seg | Task::Det => {
                let n = between(&mut rng, 1, 3);
                // Radius ≥ 4: below it a cross and a disc can be the same pixels.
                let radii = ((s / 16).max(4), (s / 5).max(5));
                for _ in 0..n {
                    let kind = Kind(rng.below(k) as usize);
                    // A shape that finds no room is left out (the first always fits).
                    add(&mut rng, kind, radii, None, &mut shapes);
                }
            }
            Task::Cls => {
                let kind = Kind(rng.below(k) as usize);
                let main = add(
                    &mut rng,
                    kind,
                    ((3 * s / 20).max(5), (s / 4).max(6)),
                    None,
                    &mut shapes,
                )
                .expect("the first shape always fits");
                let extra = rng.below(3);
                for _ in 0..extra {
                    let kind = Kind(rng.below(k) as usize);
                    add(
                        &mut rng,
                        kind,
                        (4, (s / 10).max(4)),
                        Some(main),
                        &mut shapes,
                    );
                }
            }
        }
        let noise = (0..size * size * 3)
            .map(|_| between(&mut rng, -NOISE as i64, NOISE as i64) as i8)
            .collect();
        Scene {
            size,
            shapes,
            background: bg,
            noise,
        }
    }

    /// The shape covering pixel (x, y), if any.
    pub fn shape_at(&self, x: i64, y: i64) -> Option<&Shape> {
        self.shapes.iter().find(|sh| sh.contains(x, y))
    }

    /// The image as channels-first bytes `[3, S, S]`.
    pub fn image(&self) -> Vec<u8> {
        let s = self.size;
        let mut out = vec![0u8; 3 * s * s];
        for y in 0..s {
            for x in 0..s {
                let sh = self.shape_at(x as i64, y as i64);
                for ch in 0..3 {
                    let i = (y * s + x) * 3 + ch;
                    let base = sh.map_or(self.background[i], |sh| sh.rgb[ch]);
                    let v = (base as i32 + self.noise[i] as i32).clamp(0, 255);
                    out[ch * s * s + y * s + x] = v as u8;
                }
            }
        }
        out
    }

    /// `[S, S]`: 1 where a shape is.
    pub fn mask(&self) -> Vec<u8> {
        let s = self.size;
        (0..s * s)
            .map(|i| self.shape_at((i % s) as i64, (i / s) as i64).is_some() as u8)
            .collect()
    }

    /// `[labels]` multi-hot: 1 in column k when a shape of kind k is drawn.
    pub fn presence(&self, labels: usize) -> Vec<u8> {
        let mut out = vec![0u8; labels];
        for sh in &self.shapes {
            out[sh.kind.0] = 1;
        }
        out
    }

    /// The kind of the largest shape (by pixels; the first drawn on ties).
    pub fn largest(&self) -> Kind {
        let mut best = self.shapes[0];
        for sh in &self.shapes[1..] {
            if sh.kind.area(sh.r) > best.kind.area(best.r) {
                best = *sh;
            }
        }
        best.kind
    }
}

/// A generated dataset: `input` `[N, 3, S, S]` U8 and the task's target.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub input: Vec<u8>,
    /// U8 masks or multi-hot rows (seg, det); empty for cls.
    pub target_u8: Vec<u8>,
    /// Class ids (cls); empty otherwise.
    pub target_class: Vec<i64>,
    /// Target shape of one example: `[S, S]`, `[K]` or `[]`.
    pub target_shape: Vec<usize>,
}

/// Generates `n` examples (in parallel; the bytes do not depend on the thread count).
/// `labels` pads `det` rows to that many columns (≥ [`KINDS`].len()).
pub fn generate(n: usize, size: usize, seed: u64, task: Task, labels: usize) -> Result<Generated> {
    // The CLI checks these first (clap ranges); a library caller gets an error.
    let bad = |reason: String| MnemoError::InvalidDataset {
        path: "(generated shapes)".into(),
        reason,
    };
    if size < MIN_SIZE {
        return Err(bad(format!("size {size}: must be at least {MIN_SIZE}")));
    }
    if size > 4096 {
        return Err(bad(format!("size {size}: must be at most 4096")));
    }
    if n == 0 {
        return Err(bad("0 examples: a dataset needs one or more".into()));
    }
    // Images and targets are held at once: refuse what this machine cannot hold.
    crate::validate::alloc_bytes(
        &format!("{n} shapes images of 3×{size}×{size}"),
        (n as u64).saturating_mul(4 * (size * size) as u64 + labels as u64),
        1,
    )?;
    if labels < KINDS.len() {
        return Err(bad(format!(
            "{labels} labels: there are {} shape kinds",
            KINDS.len()
        )));
    }
    let scenes: Vec<Scene> = (0..n as u64)
        .into_par_iter()
        .map(|i| Scene::generate(seed, i, size, task))
        .collect();
    let mut g = Generated {
        input: Vec::with_capacity(n * 3 * size * size),
        target_u8: Vec::new(),
        target_class: Vec::new(),
        target_shape: match task {
            Task::Seg => vec![size, size],
            Task::Det => vec![labels],
            Task::Cls => vec![],
        },
    };
    for sc in &scenes {
        g.input.extend(sc.image());
        match task {
            Task::Seg => g.target_u8.extend(sc.mask()),
            Task::Det => g.target_u8.extend(sc.presence(labels)),
            Task::Cls => g.target_class.push(sc.largest().0 as i64),
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_prefixes_agree() {
        for task in [Task::Seg, Task::Det, Task::Cls] {
            let a = generate(12, 32, 7, task, 5).unwrap();
            assert_eq!(a, generate(12, 32, 7, task, 5).unwrap());
            let b = generate(5, 32, 7, task, 5).unwrap();
            assert_eq!(b.input[..], a.input[..b.input.len()]);
            assert_ne!(a.input, generate(12, 32, 8, task, 5).unwrap().input);
        }
        // seg and det: the same images.
        assert_eq!(
            generate(4, 32, 1, Task::Seg, 5).unwrap().input,
            generate(4, 32, 1, Task::Det, 80).unwrap().input
        );
    }

    /// Pinned bytes: the generator is part of the dataset's definition, so any change to it
    /// shows here (update deliberately).
    #[test]
    fn the_stream_is_pinned() {
        let g = generate(3, 16, 0, Task::Seg, 5).unwrap();
        let h = blake3::hash(&[g.input.as_slice(), &g.target_u8].concat());
        assert_eq!(&h.to_hex()[..16], "50b5b0bc47a0c740");
    }

    /// Pixels under a shape are exactly its colour plus the noise; elsewhere the background
    /// plus the noise; the mask marks exactly the former (checked by brute force per shape,
    /// and against the closed-form area of squares).
    #[test]
    fn masks_are_the_drawn_pixels() {
        for i in 0..60 {
            let sc = Scene::generate(3, i, 40, if i % 2 == 0 { Task::Seg } else { Task::Cls });
            let (img, mask, s) = (sc.image(), sc.mask(), 40usize);
            let mut covered = vec![0u8; s * s];
            for sh in &sc.shapes {
                let mut n = 0;
                for y in 0..s {
                    for x in 0..s {
                        if sh.contains(x as i64, y as i64) {
                            covered[y * s + x] += 1;
                            n += 1;
                        }
                    }
                }
                assert_eq!(n, sh.kind.area(sh.r), "shape cut by the border: {sh:?}");
                if sh.kind == Kind(1) {
                    assert_eq!(n as i64, (2 * sh.r + 1).pow(2));
                }
            }
            for p in 0..s * s {
                assert!(covered[p] <= 1, "overlapping shapes in scene {i}");
                assert_eq!(mask[p], covered[p], "scene {i} pixel {p}");
                let sh = sc.shape_at((p % s) as i64, (p / s) as i64);
                for ch in 0..3 {
                    let base = match sh {
                        Some(sh) => sh.rgb[ch],
                        None => sc.background[p * 3 + ch],
                    };
                    let want = (base as i32 + sc.noise[p * 3 + ch] as i32).clamp(0, 255);
                    assert_eq!(img[ch * s * s + p] as i32, want);
                }
            }
        }
    }

    /// Connected components of a mask (8-connectivity): (pixel count, bbox x0, y0, x1, y1).
    fn components(mask: &[u8], s: usize) -> Vec<Vec<(usize, usize)>> {
        let mut seen = vec![false; s * s];
        let mut out = Vec::new();
        for start in 0..s * s {
            if mask[start] == 0 || seen[start] {
                continue;
            }
            let mut stack = vec![start];
            seen[start] = true;
            let mut px = Vec::new();
            while let Some(p) = stack.pop() {
                let (x, y) = ((p % s) as i64, (p / s) as i64);
                px.push((x as usize, y as usize));
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (nx, ny) = (x + dx, y + dy);
                        if nx < 0 || ny < 0 || nx >= s as i64 || ny >= s as i64 {
                            continue;
                        }
                        let q = ny as usize * s + nx as usize;
                        if mask[q] == 1 && !seen[q] {
                            seen[q] = true;
                            stack.push(q);
                        }
                    }
                }
            }
            out.push(px);
        }
        out
    }

    /// Tells a component's kind from its pixels alone: square fills its box; a triangle
    /// has a one-pixel top row and a full bottom row; a diamond one-pixel top and bottom
    /// rows; then a disc fills > 70% of its box and a cross less.
    fn kind_of(px: &[(usize, usize)]) -> usize {
        let x0 = px.iter().map(|p| p.0).min().unwrap();
        let x1 = px.iter().map(|p| p.0).max().unwrap();
        let y0 = px.iter().map(|p| p.1).min().unwrap();
        let y1 = px.iter().map(|p| p.1).max().unwrap();
        let w = x1 - x0 + 1;
        let row = |y| px.iter().filter(|p| p.1 == y).count();
        let fill = px.len() as f64 / (w * (y1 - y0 + 1)) as f64;
        match (row(y0), row(y1)) {
            (t, _) if t == w => 1,
            (1, b) if b == w => 2,
            (1, 1) => 4,
            _ if fill > 0.7 => 0,
            _ => 3,
        }
    }

    #[test]
    fn presence_and_class_labels_agree_with_the_masks_components() {
        let s = 48;
        let seg = generate(200, s, 11, Task::Seg, 5).unwrap();
        let det = generate(200, s, 11, Task::Det, 80).unwrap();
        for i in 0..200 {
            let mask = &seg.target_u8[i * s * s..(i + 1) * s * s];
            let comps = components(mask, s);
            assert!(
                (1..=3).contains(&comps.len()),
                "example {i}: {}",
                comps.len()
            );
            let mut want = [0u8; 80];
            for c in &comps {
                want[kind_of(c)] = 1;
            }
            assert_eq!(
                &det.target_u8[i * 80..(i + 1) * 80],
                &want[..],
                "example {i}"
            );
        }
        let cls = generate(200, s, 12, Task::Cls, 5).unwrap();
        for i in 0..200 {
            let sc = Scene::generate(12, i as u64, s, Task::Cls);
            let comps = components(&sc.mask(), s);
            let largest = comps.iter().max_by_key(|c| c.len()).unwrap();
            assert!(comps.iter().filter(|c| c.len() == largest.len()).count() == 1);
            assert_eq!(cls.target_class[i], kind_of(largest) as i64, "example {i}");
        }
    }

    #[test]
    fn kinds_are_roughly_uniform() {
        let n = 2000;
        let cls = generate(n, 32, 5, Task::Cls, 5).unwrap();
        let det = generate(n, 32, 5, Task::Det, 5).unwrap();
        for k in 0..KINDS.len() {
            let c = cls.target_class.iter().filter(|&&t| t == k as i64).count();
            // 400 expected; ±4 standard deviations (σ ≈ 17.9).
            assert!((328..=472).contains(&c), "cls kind {k}: {c}");
            let d = (0..n).filter(|i| det.target_u8[i * 5 + k] == 1).count();
            let mean = (0..n)
                .map(|i| {
                    det.target_u8[i * 5..(i + 1) * 5]
                        .iter()
                        .filter(|&&v| v == 1)
                        .count()
                })
                .sum::<usize>() as f64
                / 5.0;
            assert!(
                (d as f64 - mean).abs() < 0.1 * mean,
                "det kind {k}: {d} vs {mean}"
            );
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(generate(1, 8, 0, Task::Seg, 5).is_err());
        assert!(generate(0, 32, 0, Task::Seg, 5).is_err());
        assert!(generate(1, 32, 0, Task::Det, 4).is_err());
    }
}
