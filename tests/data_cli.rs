//! `mnemo data`: IDX import (plain and gzipped), the row operations, and clear errors.

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use std::io::Write;
use std::path::Path;

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

/// 6 images of 2×3 pixels whose pixel j of image i is 10·i + j, labels 0,1,2,0,1,2.
fn write_idx(dir: &Path, gz: bool) -> (String, String) {
    let pixels: Vec<u8> = (0..6u8)
        .flat_map(|i| (0..6u8).map(move |j| 10 * i + j))
        .collect();
    let files = [
        ("images.idx", idx(&[6, 2, 3], &pixels)),
        ("labels.idx", idx(&[6], &[0, 1, 2, 0, 1, 2])),
    ];
    let mut names = Vec::new();
    for (name, bytes) in files {
        let name = if gz {
            format!("{name}.gz")
        } else {
            name.to_string()
        };
        let f = std::fs::File::create(dir.join(&name)).unwrap();
        if gz {
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap();
        } else {
            let mut f = f;
            f.write_all(&bytes).unwrap();
        }
        names.push(name);
    }
    (names[0].clone(), names[1].clone())
}

fn ds(dir: &Path, name: &str) -> (Vec<usize>, Vec<u8>, Vec<i64>) {
    let c = Checkpoint::open(dir.join(name)).unwrap();
    (
        c.entry("input").unwrap().shape.clone(),
        c.bytes("input").unwrap().to_vec(),
        c.to_i64("target").unwrap(),
    )
}

#[test]
fn idx_import_plain_and_gzipped() {
    let d = workdir();
    for gz in [false, true] {
        let (im, lb) = write_idx(d.path(), gz);
        ok(mnemo_in(
            d.path(),
            &["data", "import", "idx", &im, &lb, "-o", "a.st"],
        ));
        let (shape, x, y) = ds(d.path(), "a.st");
        assert_eq!(shape, vec![6, 1, 2, 3]);
        assert_eq!(x[7], 11, "image 1, pixel 1");
        assert_eq!(y, vec![0, 1, 2, 0, 1, 2]);
        ok(mnemo_in(
            d.path(),
            &["data", "import", "idx", &im, &lb, "--flatten", "-o", "f.st"],
        ));
        assert_eq!(ds(d.path(), "f.st").0, vec![6, 6]);
    }
}

#[test]
fn bad_idx_files_name_the_file_and_write_nothing() {
    let d = workdir();
    let (im, _) = write_idx(d.path(), false);
    std::fs::write(d.path().join("bad.idx"), [1, 2, 3, 4, 5]).unwrap();
    let r = mnemo_in(
        d.path(),
        &["data", "import", "idx", &im, "bad.idx", "-o", "x.st"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("bad.idx") && r.stderr.contains("magic"),
        "{}",
        r.stderr
    );
    std::fs::write(d.path().join("five.idx"), idx(&[5], &[0; 5])).unwrap();
    let r = mnemo_in(
        d.path(),
        &["data", "import", "idx", &im, "five.idx", "-o", "x.st"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("five.idx") && r.stderr.contains("6 images"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("x.st").exists());
}

#[test]
fn split_permute_shuffle_take_concat_stats() {
    let d = workdir();
    let (im, lb) = write_idx(d.path(), false);
    ok(mnemo_in(
        d.path(),
        &[
            "data",
            "import",
            "idx",
            &im,
            &lb,
            "--flatten",
            "-o",
            "all.st",
        ],
    ));
    // split keeps classes 1 and 2 in file order; --relabel numbers them in the order given.
    ok(mnemo_in(
        d.path(),
        &[
            "data",
            "split",
            "all.st",
            "--classes",
            "2,1",
            "--relabel",
            "-o",
            "s.st",
        ],
    ));
    let (shape, x, y) = ds(d.path(), "s.st");
    assert_eq!(shape, vec![4, 6]);
    assert_eq!(y, vec![1, 0, 1, 0]);
    assert_eq!(x[0], 10, "the first kept image is image 1");
    // permute: one permutation for every example, the same for the same seed.
    ok(mnemo_in(
        d.path(),
        &["data", "permute", "all.st", "--seed", "5", "-o", "p.st"],
    ));
    ok(mnemo_in(
        d.path(),
        &["data", "permute", "s.st", "--seed", "5", "-o", "ps.st"],
    ));
    let (_, px, py) = ds(d.path(), "p.st");
    assert_eq!(py, vec![0, 1, 2, 0, 1, 2]);
    let perm: Vec<u8> = px[..6].to_vec(); // image 0's pixels are 0..6: its row is the permutation
    assert_ne!(perm, (0..6).collect::<Vec<u8>>(), "seed 5 moves something");
    for i in 0..6usize {
        for j in 0..6usize {
            assert_eq!(px[i * 6 + j], 10 * i as u8 + perm[j]);
        }
    }
    let (_, psx, _) = ds(d.path(), "ps.st");
    assert_eq!(psx[..6].iter().map(|v| v - 10).collect::<Vec<u8>>(), perm);
    // shuffle: the same examples, another order.
    ok(mnemo_in(
        d.path(),
        &["data", "shuffle", "all.st", "--seed", "1", "-o", "sh.st"],
    ));
    let (_, sx, sy) = ds(d.path(), "sh.st");
    let mut rows: Vec<(u8, i64)> = sx.chunks(6).map(|r| r[0]).zip(sy).collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![(0, 0), (10, 1), (20, 2), (30, 0), (40, 1), (50, 2)]
    );
    // take / skip, concat.
    ok(mnemo_in(
        d.path(),
        &["data", "take", "all.st", "2", "--skip", "3", "-o", "t.st"],
    ));
    assert_eq!(ds(d.path(), "t.st").2, vec![0, 1]);
    ok(mnemo_in(
        d.path(),
        &["data", "concat", "t.st", "s.st", "-o", "c.st"],
    ));
    assert_eq!(ds(d.path(), "c.st").2, vec![0, 1, 1, 0, 1, 0]);
    let r = mnemo_in(
        d.path(),
        &["data", "take", "all.st", "5", "--skip", "3", "-o", "no.st"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("all.st"), "{}", r.stderr);
    // concat refuses different example shapes, naming the file.
    ok(mnemo_in(
        d.path(),
        &["data", "import", "idx", &im, &lb, "-o", "img.st"],
    ));
    let r = mnemo_in(
        d.path(),
        &["data", "concat", "all.st", "img.st", "-o", "no.st"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("img.st"), "{}", r.stderr);
    let s = ok(mnemo_in(d.path(), &["data", "stats", "all.st"])).last_json();
    assert_eq!(s["classes"]["2"], 2);
    assert!((s["max"].as_f64().unwrap() - 55.0 / 255.0).abs() < 1e-6);
}

#[test]
fn npy_import_round_trips_numpy_arrays() {
    let d = workdir();
    let f = |n: &str| fixture(&format!("data/{n}"));
    ok(mnemo_in(
        d.path(),
        &[
            "data",
            "import",
            "npy",
            &f("x_u8.npy"),
            &f("y_i64.npy"),
            "-o",
            "u.st",
        ],
    ));
    let (shape, x, y) = ds(d.path(), "u.st");
    assert_eq!(shape, vec![5, 2, 3]);
    assert_eq!(x, (0..30).collect::<Vec<u8>>());
    assert_eq!(y, vec![0, 1, 2, 1, 0]);
    ok(mnemo_in(
        d.path(),
        &[
            "data",
            "import",
            "npy",
            &f("x_f32.npy"),
            &f("y_u8.npy"),
            "-o",
            "f.st",
        ],
    ));
    let c = Checkpoint::open(d.path().join("f.st")).unwrap();
    assert_eq!(c.entry("input").unwrap().dtype.to_string(), "F32");
    assert_eq!(c.to_f32("input").unwrap()[5], 1.25);
    assert_eq!(c.to_i64("target").unwrap(), vec![3, 2, 1, 0]);
    for (x, y, what) in [
        ("x_fortran.npy", "y_u8.npy", "Fortran"),
        ("x_f32.npy", "y_f32.npy", "integer labels"),
        ("x_u8.npy", "y_u8.npy", "4 labels"),
    ] {
        let r = mnemo_in(
            d.path(),
            &["data", "import", "npy", &f(x), &f(y), "-o", "bad.st"],
        );
        assert_eq!(r.code, 2, "{x} {y}");
        assert!(r.stderr.contains(what), "{what}: {}", r.stderr);
        assert!(!d.path().join("bad.st").exists());
    }
}
