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

/// A `.npy` fixture as NumPy wrote it: shape and raw little-endian data.
fn npy(name: &str) -> (Vec<usize>, Vec<u8>) {
    let a = mnemo::data::raw::read_npy(Path::new(&fixture(&format!("data/{name}")))).unwrap();
    (a.shape, a.data)
}

fn npy_i64(name: &str) -> Vec<i64> {
    npy(name)
        .1
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Runs a command that must fail: exit 2, the message names `file` (and says `what`), and
/// no output file is left behind.
fn refused(dir: &Path, args: &[&str], file: &str, what: &str) {
    let r = mnemo_in(dir, args);
    assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    assert!(
        r.stderr.contains(file) && r.stderr.contains(what),
        "{args:?}: expected '{file}' and '{what}' in: {}",
        r.stderr
    );
    if let Some(i) = args.iter().position(|a| *a == "-o") {
        assert!(!dir.join(args[i + 1]).exists(), "{args:?} left its output");
    }
}

#[test]
fn npz_import_round_trips_savez_and_savez_compressed() {
    let d = workdir();
    let f = |n: &str| fixture(&format!("data/{n}"));
    // np.savez(x=, y=): stored members, found by their default names.
    ok(mnemo_in(
        d.path(),
        &["data", "import", "npz", &f("xy.npz"), "-o", "a.st"],
    ));
    let (shape, x, y) = ds(d.path(), "a.st");
    assert_eq!((shape, x), (vec![5, 2, 3], npy("x_u8.npy").1));
    assert_eq!(y, npy_i64("y_i64.npy"));
    // np.savez(a, b): arr_0 and arr_1, taken in order.
    ok(mnemo_in(
        d.path(),
        &["data", "import", "npz", &f("positional.npz"), "-o", "p.st"],
    ));
    assert_eq!(ds(d.path(), "p.st"), ds(d.path(), "a.st"));
    // np.savez_compressed(images=, labels=): deflated members, named explicitly or taken in
    // order (two arrays, neither called x or y).
    for extra in [&["--x", "images", "--y", "labels"][..], &[]] {
        let mut args = vec!["data", "import", "npz"];
        let file = f("xy_compressed.npz");
        args.push(&file);
        args.extend(extra);
        args.extend(["-o", "c.st"]);
        ok(mnemo_in(d.path(), &args));
        let c = Checkpoint::open(d.path().join("c.st")).unwrap();
        assert_eq!(c.entry("input").unwrap().dtype.to_string(), "F32");
        assert_eq!(c.bytes("input").unwrap(), npy("x_f32.npy").1);
        assert_eq!(c.to_i64("target").unwrap(), vec![3, 2, 1, 0]);
    }
    // Refusals name the archive (and the member).
    let dir = d.path();
    refused(
        dir,
        &[
            "data",
            "import",
            "npz",
            &f("xy.npz"),
            "--x",
            "images",
            "-o",
            "bad.st",
        ],
        "xy.npz",
        "no array 'images' for X (the archive has: x, y)",
    );
    refused(
        dir,
        &[
            "data",
            "import",
            "npz",
            &f("xy_compressed.npz"),
            "--x",
            "images",
            "-o",
            "bad.st",
        ],
        "xy_compressed.npz",
        "no array 'y'",
    );
    refused(
        dir,
        &["data", "import", "npz", &f("mismatch.npz"), "-o", "bad.st"],
        "mismatch.npz:y",
        "4 labels but",
    );
    refused(
        dir,
        &["data", "import", "npz", &f("x_u8.npy"), "-o", "bad.st"],
        "x_u8.npy",
        "not a .npz archive",
    );
    refused(
        dir,
        &[
            "data",
            "import",
            "npy",
            &f("xy.npz"),
            &f("y_i64.npy"),
            "-o",
            "bad.st",
        ],
        "xy.npz",
        "mnemo data import npz",
    );
}

/// The fixture folder's files in torchvision ImageFolder order (cat, dog, zebra; nested last).
const FOLDER: [&str; 8] = [
    "cat/01.png",
    "cat/02.jpg",
    "cat/03.png",
    "dog/01.png",
    "dog/02.JPEG",
    "zebra/01.jpg",
    "zebra/02.png",
    "zebra/sub/03.png",
];

/// Largest per-pixel difference between a decoded JPEG and Pillow's (libjpeg-turbo) decoding
/// of it. The Rust decoder's IDCT and chroma upsampling are not libjpeg-turbo's: measured 1 for
/// 4:4:4 and grey JPEGs and 3 for 4:2:0 (mean 0.44) on these fixtures. PNGs must be exact.
const JPEG_TOLERANCE: i32 = 4;

fn compare_images(got: &[u8], want: &[u8], files: &[&str]) {
    let per = want.len() / files.len();
    assert_eq!(got.len(), want.len());
    for (i, f) in files.iter().enumerate() {
        let (g, w) = (&got[i * per..(i + 1) * per], &want[i * per..(i + 1) * per]);
        let max = g
            .iter()
            .zip(w)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap();
        let mean = g
            .iter()
            .zip(w)
            .map(|(&a, &b)| (a as i32 - b as i32).abs() as f64)
            .sum::<f64>()
            / per as f64;
        if f.to_ascii_lowercase().ends_with(".png") {
            assert_eq!(max, 0, "{f}: PNG pixels differ from Pillow's");
        } else {
            assert!(
                max <= JPEG_TOLERANCE && mean < 1.0,
                "{f}: max {max}, mean {mean}"
            );
        }
    }
}

#[test]
fn folder_import_matches_pillow_in_imagefolder_order() {
    let d = workdir();
    let folder = fixture("data/folder");
    let r = ok(mnemo_in(
        d.path(),
        &["data", "import", "folder", &folder, "-o", "rgb.st"],
    ));
    assert!(
        r.stderr.contains("skipped 1 file") && r.stderr.contains("notes.txt"),
        "{}",
        r.stderr
    );
    let (shape, x, y) = ds(d.path(), "rgb.st");
    let (want_shape, want) = npy("folder_x.npy");
    assert_eq!(shape, want_shape);
    assert_eq!(shape, vec![8, 3, 10, 12]);
    assert_eq!(y, npy_i64("folder_y.npy"));
    assert_eq!(y, vec![0, 0, 0, 1, 1, 2, 2, 2]);
    compare_images(&x, &want, &FOLDER);
    let c = Checkpoint::open(d.path().join("rgb.st")).unwrap();
    assert_eq!(
        c.metadata()["mnemo.data.class_names"],
        r#"["cat","dog","zebra"]"#
    );
    // One channel: Pillow's convert("L").
    ok(mnemo_in(
        d.path(),
        &[
            "data",
            "import",
            "folder",
            &folder,
            "--grayscale",
            "-q",
            "-o",
            "gray.st",
        ],
    ));
    let (shape, x, _) = ds(d.path(), "gray.st");
    let (want_shape, want) = npy("folder_gray.npy");
    assert_eq!(
        (shape, want_shape.clone()),
        (vec![8, 1, 10, 12], want_shape)
    );
    compare_images(&x, &want, &FOLDER);
}

#[test]
fn folder_import_resizes_as_pillow_bilinear() {
    let d = workdir();
    let sizes = fixture("data/folder_sizes");
    // Four sizes and no --size: refused, naming the first file that differs.
    refused(
        d.path(),
        &["data", "import", "folder", &sizes, "-o", "no.st"],
        "small.png",
        "--size H,W",
    );
    let files = ["a/big.png", "a/small.png", "b/gray.png", "b/mid.png"];
    for (size, gray, want) in [
        ("6,5", false, "folder_sizes_x.npy"),
        ("6,5", true, "folder_sizes_gray.npy"),
        ("13,16", false, "folder_sizes_up.npy"),
    ] {
        let mut args = vec!["data", "import", "folder", &sizes, "--size", size];
        if gray {
            args.push("--grayscale");
        }
        args.extend(["-o", "s.st"]);
        ok(mnemo_in(d.path(), &args));
        let (shape, x, y) = ds(d.path(), "s.st");
        let (want_shape, want) = npy(want);
        assert_eq!(shape, want_shape, "{size} {gray}");
        assert_eq!(y, npy_i64("folder_sizes_y.npy"));
        compare_images(&x, &want, &files);
    }
}

#[test]
fn bad_folders_exit_2_naming_the_file() {
    let d = workdir();
    let dir = d.path();
    let good = std::fs::read(fixture("data/folder/cat/01.png")).unwrap();
    let mk = |p: &str, bytes: &[u8]| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    // Corrupt and truncated images.
    mk("corrupt/a/ok.png", &good);
    mk("corrupt/b/bad.png", b"not a png at all");
    refused(
        dir,
        &["data", "import", "folder", "corrupt", "-o", "x.st"],
        "bad.png",
        "cannot decode",
    );
    mk("truncated/a/ok.png", &good);
    mk("truncated/a/half.png", &good[..good.len() / 2]);
    refused(
        dir,
        &["data", "import", "folder", "truncated", "-o", "x.st"],
        "half.png",
        "cannot decode",
    );
    // No class folders; a class without images; formats ImageFolder reads but we cannot.
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    refused(
        dir,
        &["data", "import", "folder", "empty", "-o", "x.st"],
        "empty",
        "no class folders",
    );
    mk("noimg/a/ok.png", &good);
    mk("noimg/b/readme.txt", b"hi");
    refused(
        dir,
        &["data", "import", "folder", "noimg", "-o", "x.st"],
        "noimg/b",
        "no .png, .jpg or .jpeg images",
    );
    mk("bmp/a/ok.png", &good);
    mk("bmp/a/pic.bmp", b"BM");
    refused(
        dir,
        &["data", "import", "folder", "bmp", "-o", "x.st"],
        "pic.bmp",
        "BMP images are not supported",
    );
    refused(
        dir,
        &["data", "import", "folder", "missing", "-o", "x.st"],
        "missing",
        "No such file",
    );
    let r = mnemo_in(
        dir,
        &[
            "data", "import", "folder", "corrupt", "--size", "0,3", "-o", "x.st",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("positive integer"), "{}", r.stderr);
}

/// `rot_u8.npy` (4 images [1, 9, 12]) with 4 labels, as a dataset.
fn rot_dataset(dir: &Path, x: &str, name: &str) {
    ok(mnemo_in(
        dir,
        &[
            "data",
            "import",
            "npy",
            &fixture(&format!("data/{x}")),
            &fixture("data/y_u8.npy"),
            "-o",
            name,
        ],
    ));
}

#[test]
fn rotate_matches_scipy_ndimage_rotate() {
    let d = workdir();
    let dir = d.path();
    rot_dataset(dir, "rot_u8.npy", "u8.st");
    let (_, orig, _) = ds(dir, "u8.st");
    // SciPy's bilinear rotation, uint8 rounded half up. Stated tolerance: 1 grey level (a
    // floating-point tie could round the other way on another libm); measured: 0.
    for (deg, name) in [("30", "30"), ("-45", "m45"), ("7.5", "7.5"), ("200", "200")] {
        ok(mnemo_in(
            dir,
            &["data", "rotate", "u8.st", "--degrees", deg, "-o", "r.st"],
        ));
        let (shape, got, y) = ds(dir, "r.st");
        let (want_shape, want) = npy(&format!("rot_u8_{name}.npy"));
        assert_eq!((shape, y), (want_shape, vec![3, 2, 1, 0]));
        let max = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap();
        assert!(max <= 1, "{deg}°: max difference {max}");
        assert_ne!(got, orig);
    }
    // 0° is the identity; 360° too.
    for deg in ["0", "360"] {
        ok(mnemo_in(
            dir,
            &["data", "rotate", "u8.st", "--degrees", deg, "-o", "r.st"],
        ));
        assert_eq!(ds(dir, "r.st").1, orig, "{deg}°");
    }
    // F32 [N, H, W] (no channel axis): SciPy's float64 result stored as float32.
    rot_dataset(dir, "rot_f32.npy", "f.st");
    ok(mnemo_in(
        dir,
        &["data", "rotate", "f.st", "--degrees", "30", "-o", "rf.st"],
    ));
    let c = Checkpoint::open(dir.join("rf.st")).unwrap();
    assert_eq!(c.entry("input").unwrap().dtype.to_string(), "F32");
    let got = f32s(c.bytes("input").unwrap());
    let want = f32s(&npy("rot_f32_30.npy").1);
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-6, "F32: max difference {max}");
    // 90° on a square image is exact: np.rot90 (counter-clockwise).
    ok(mnemo_in(
        dir,
        &["data", "rotate", "f.st", "--degrees", "90", "-o", "r90.st"],
    ));
    let x = f32s(&npy("rot_f32.npy").1);
    let r = f32s(
        Checkpoint::open(dir.join("r90.st"))
            .unwrap()
            .bytes("input")
            .unwrap(),
    );
    for n in 0..4 {
        for i in 0..9 {
            for j in 0..9 {
                assert_eq!(r[n * 81 + i * 9 + j], x[n * 81 + j * 9 + 8 - i]);
            }
        }
    }
}

#[test]
fn rotate_flat_inputs_need_a_shape() {
    let d = workdir();
    let dir = d.path();
    let (im, lb) = write_idx(dir, false);
    ok(mnemo_in(
        dir,
        &[
            "data",
            "import",
            "idx",
            &im,
            &lb,
            "--flatten",
            "-o",
            "flat.st",
        ],
    ));
    refused(
        dir,
        &["data", "rotate", "flat.st", "--degrees", "90", "-o", "r.st"],
        "flat.st",
        "--shape H,W",
    );
    refused(
        dir,
        &[
            "data",
            "rotate",
            "flat.st",
            "--degrees",
            "90",
            "--shape",
            "4,4",
            "-o",
            "r.st",
        ],
        "flat.st",
        "shape 4,4 does not divide",
    );
    // 180° turns each 2×3 image (pixels 10·i + j) back to front, and the shape stays flat.
    ok(mnemo_in(
        dir,
        &[
            "data",
            "rotate",
            "flat.st",
            "--degrees",
            "180",
            "--shape",
            "2,3",
            "-o",
            "r.st",
        ],
    ));
    let (shape, x, y) = ds(dir, "r.st");
    assert_eq!((shape, y), (vec![6, 6], vec![0, 1, 2, 0, 1, 2]));
    for i in 0..6u8 {
        let row: Vec<u8> = (0..6u8).rev().map(|j| 10 * i + j).collect();
        assert_eq!(x[i as usize * 6..(i as usize + 1) * 6], row[..]);
    }
    // Rotating keeps the class names of an imported folder.
    ok(mnemo_in(
        dir,
        &[
            "data",
            "import",
            "folder",
            &fixture("data/folder"),
            "-q",
            "-o",
            "img.st",
        ],
    ));
    ok(mnemo_in(
        dir,
        &[
            "data",
            "rotate",
            "img.st",
            "--degrees",
            "-15",
            "-o",
            "imgr.st",
        ],
    ));
    let c = Checkpoint::open(dir.join("imgr.st")).unwrap();
    assert_eq!(
        c.metadata()["mnemo.data.class_names"],
        r#"["cat","dog","zebra"]"#
    );
    assert_eq!(c.metadata()["mnemo.data.rotate_degrees"], "-15");
}

#[test]
fn every_data_command_refuses_a_bad_input_naming_it() {
    let d = workdir();
    let dir = d.path();
    std::fs::write(dir.join("junk.st"), b"definitely not safetensors").unwrap();
    let (im, lb) = write_idx(dir, false);
    ok(mnemo_in(
        dir,
        &["data", "import", "idx", &im, &lb, "-o", "good.st"],
    ));
    for args in [
        &["data", "split", "junk.st", "--classes", "1", "-o", "o.st"][..],
        &["data", "permute", "junk.st", "--seed", "1", "-o", "o.st"],
        &["data", "rotate", "junk.st", "--degrees", "10", "-o", "o.st"],
        &["data", "augment", "junk.st", "--hflip", "0.5", "-o", "o.st"],
        &[
            "data",
            "augment",
            "good.st",
            "--params-in",
            "junk.st",
            "-o",
            "o.st",
        ],
        &["data", "shuffle", "junk.st", "--seed", "1", "-o", "o.st"],
        &["data", "take", "junk.st", "1", "-o", "o.st"],
        &["data", "concat", "good.st", "junk.st", "-o", "o.st"],
        &["data", "stats", "junk.st"],
        &["data", "import", "npy", "junk.st", "junk.st", "-o", "o.st"],
        &["data", "import", "npz", "junk.st", "-o", "o.st"],
        &["data", "import", "idx", "junk.st", &lb, "-o", "o.st"],
        &["data", "import", "folder", "junk.st", "-o", "o.st"],
    ] {
        refused(dir, args, "junk.st", "");
    }
}

#[test]
fn class_names_follow_the_examples() {
    let d = workdir();
    let dir = d.path();
    ok(mnemo_in(
        dir,
        &[
            "data",
            "import",
            "folder",
            &fixture("data/folder"),
            "-q",
            "-o",
            "img.st",
        ],
    ));
    let names = |f: &str| {
        Checkpoint::open(dir.join(f))
            .unwrap()
            .metadata()
            .get("mnemo.data.class_names")
            .cloned()
    };
    for args in [
        &["data", "shuffle", "img.st", "--seed", "1", "-o", "o.st"][..],
        &["data", "take", "img.st", "2", "-o", "o.st"],
        &["data", "permute", "img.st", "--seed", "1", "-o", "o.st"],
        &["data", "split", "img.st", "--classes", "0,2", "-o", "o.st"],
        &["data", "concat", "img.st", "img.st", "-o", "o.st"],
    ] {
        ok(mnemo_in(dir, args));
        assert_eq!(
            names("o.st").as_deref(),
            Some(r#"["cat","dog","zebra"]"#),
            "{args:?}"
        );
    }
    // --relabel renumbers the kept classes in the order given: their names follow.
    ok(mnemo_in(
        dir,
        &[
            "data",
            "split",
            "img.st",
            "--classes",
            "2,0",
            "--relabel",
            "-o",
            "r.st",
        ],
    ));
    assert_eq!(names("r.st").as_deref(), Some(r#"["zebra","cat"]"#));
    assert_eq!(ds(dir, "r.st").2, vec![1, 1, 1, 0, 0, 0]);
}

/// Target tensor of a dataset file: shape, dtype name and bytes.
fn target(dir: &Path, name: &str) -> (Vec<usize>, String, Vec<u8>) {
    let c = Checkpoint::open(dir.join(name)).unwrap();
    let e = c.entry("target").unwrap();
    (
        e.shape.clone(),
        e.dtype.to_string(),
        c.bytes("target").unwrap().to_vec(),
    )
}

#[test]
fn voc_import_matches_pillow_resize_and_palette_indices() {
    let d = workdir();
    let root = fixture("data/voc");
    // Three sizes: --size is needed.
    refused(
        d.path(),
        &["data", "import", "voc", &root, "-o", "no.st"],
        "2007_000039.jpg",
        "--size H,W",
    );
    let r = ok(mnemo_in(
        d.path(),
        &[
            "data", "import", "voc", &root, "--size", "16,20", "-o", "t.st",
        ],
    ));
    assert_eq!(r.last_json()["target_shape"], serde_json::json!([16, 20]));
    let (shape, x, _) = {
        let c = Checkpoint::open(d.path().join("t.st")).unwrap();
        let e = c.entry("input").unwrap();
        (e.shape.clone(), c.bytes("input").unwrap().to_vec(), ())
    };
    let (want_shape, want) = npy("voc_train_x.npy");
    assert_eq!(shape, want_shape);
    let ids = ["2007_000032.jpg", "2007_000039.jpg", "2008_000123.jpg"];
    compare_images(&x, &want, &ids);
    // Masks: exact (palette indices through Pillow's NEAREST; one mask has a shuffled
    // palette, one is greyscale).
    let (tshape, dtype, y) = target(d.path(), "t.st");
    let (want_shape, want) = npy("voc_train_y.npy");
    assert_eq!((tshape, dtype.as_str()), (want_shape, "U8"));
    assert_eq!(y, want);
    assert!(y.contains(&255) && y.iter().any(|&v| v > 1 && v < 255));
    let c = Checkpoint::open(d.path().join("t.st")).unwrap();
    let names: Vec<String> = serde_json::from_str(&c.metadata()["mnemo.data.class_names"]).unwrap();
    assert_eq!(names.len(), 21);
    assert_eq!(
        (names[0].as_str(), names[20].as_str()),
        ("background", "tvmonitor")
    );
    // Binary masks: objects 1, void kept.
    ok(mnemo_in(
        d.path(),
        &[
            "data", "import", "voc", &root, "--size", "16,20", "--mask", "binary", "-o", "b.st",
        ],
    ));
    assert_eq!(target(d.path(), "b.st").2, npy("voc_train_bin_y.npy").1);
    // val: one size, no resize; one mask is a 4-bit palette PNG.
    ok(mnemo_in(
        d.path(),
        &[
            "data", "import", "voc", &root, "--split", "val", "-o", "v.st",
        ],
    ));
    let (_, x, _) = ds_u8(d.path(), "v.st");
    compare_images(
        &x,
        &npy("voc_val_x.npy").1,
        &["2009_000001.jpg", "2009_000002.jpg"],
    );
    let (tshape, _, y) = target(d.path(), "v.st");
    assert_eq!(tshape, vec![2, 9, 11]);
    assert_eq!(y, npy("voc_val_y.npy").1);
    // A list file given by path.
    let list = d.path().join("mine.txt");
    std::fs::write(&list, "\n2009_000002\n\n").unwrap();
    ok(mnemo_in(
        d.path(),
        &[
            "data",
            "import",
            "voc",
            &root,
            "--split",
            list.to_str().unwrap(),
            "-o",
            "m.st",
        ],
    ));
    assert_eq!(target(d.path(), "m.st").2, npy("voc_val_y.npy").1[99..]);
}

fn ds_u8(dir: &Path, name: &str) -> (Vec<usize>, Vec<u8>, ()) {
    let c = Checkpoint::open(dir.join(name)).unwrap();
    (
        c.entry("input").unwrap().shape.clone(),
        c.bytes("input").unwrap().to_vec(),
        (),
    )
}

#[test]
fn voc_masks_resize_as_pillow_nearest() {
    let d = workdir();
    let root = fixture("data/voc");
    for (h, w) in [(64, 64), (10, 10), (20, 100), (7, 5), (37, 53)] {
        let size = format!("{h},{w}");
        ok(mnemo_in(
            d.path(),
            &[
                "data", "import", "voc", &root, "--split", "nearest", "--size", &size, "-o", "n.st",
            ],
        ));
        let want = if (h, w) == (37, 53) {
            npy("voc_nearest_src.npy").1
        } else {
            npy(&format!("voc_nearest_{h}x{w}.npy")).1
        };
        let (shape, _, y) = target(d.path(), "n.st");
        assert_eq!(shape, vec![1, h, w]);
        assert_eq!(y, want, "{h}x{w}");
    }
}

#[test]
fn voc_errors_name_the_file() {
    let d = workdir();
    let root = fixture("data/voc");
    let voc = |split: &str| -> Vec<String> {
        [
            "data", "import", "voc", &root, "--split", split, "--size", "8,8", "-o", "e.st",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for (split, file, what) in [
        (
            "missing",
            "2010_999999.jpg",
            "no image for id '2010_999999'",
        ),
        (
            "badsize",
            "2011_000001.png",
            "the mask is 9×11 (H×W) but its image",
        ),
        (
            "badindex",
            "2011_000002.png",
            "pixel (row 5, column 6) has palette index 21",
        ),
        (
            "test",
            "ImageSets/Segmentation/test.txt",
            "no such split list",
        ),
    ] {
        let args = voc(split);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(d.path(), &args, file, what);
    }
}

#[test]
fn coco_import_maps_category_ids_in_ascending_order() {
    let d = workdir();
    let ann = fixture("data/coco/annotations.json");
    let imgs = fixture("data/coco/images");
    // Three sizes: --size is needed.
    refused(
        d.path(),
        &["data", "import", "coco", &ann, &imgs, "-o", "no.st"],
        "b.png",
        "--size H,W",
    );
    let r = ok(mnemo_in(
        d.path(),
        &[
            "data", "import", "coco", &ann, &imgs, "--size", "12,10", "-o", "c.st",
        ],
    ));
    assert!(
        r.stderr.contains("1 image(s) without annotations kept"),
        "{}",
        r.stderr
    );
    let (shape, x, _) = ds_u8(d.path(), "c.st");
    let (want_shape, want) = npy("coco_x.npy");
    assert_eq!(shape, want_shape);
    assert_eq!(x, want, "PNG pixels must equal Pillow's");
    let (tshape, dtype, y) = target(d.path(), "c.st");
    assert_eq!((tshape, dtype.as_str()), (vec![5, 4], "U8"));
    assert_eq!(y, npy("coco_y.npy").1);
    // Columns: ids 1, 3, 7, 90 (listed 7, 1, 90, 3); the crowd-only image has bicycle.
    assert_eq!(&y[8..12], &[0, 1, 0, 0]);
    assert_eq!(&y[12..16], &[0, 0, 0, 0]);
    let c = Checkpoint::open(d.path().join("c.st")).unwrap();
    assert_eq!(
        c.metadata()["mnemo.data.class_names"],
        r#"["person","bicycle","car","toothbrush"]"#
    );
    assert_eq!(c.metadata()["mnemo.data.category_ids"], "[1,3,7,90]");
    // --skip-empty drops the image without annotations.
    ok(mnemo_in(
        d.path(),
        &[
            "data",
            "import",
            "coco",
            &ann,
            &imgs,
            "--size",
            "12,10",
            "--skip-empty",
            "-q",
            "-o",
            "s.st",
        ],
    ));
    assert_eq!(ds_u8(d.path(), "s.st").1, npy("coco_skip_x.npy").1);
    assert_eq!(target(d.path(), "s.st").2, npy("coco_skip_y.npy").1);
    // The multi-hot rows are a dataset the engine accepts (eval reads them).
    mnemo::data::Dataset::open(d.path().join("s.st")).unwrap();
}

#[test]
fn coco_errors_name_the_file_and_annotation() {
    let d = workdir();
    let imgs = fixture("data/coco/images");
    for (json, file, what) in [
        (
            "bad_image_id.json",
            "bad_image_id.json",
            "annotation id 77: image_id 999",
        ),
        (
            "bad_category.json",
            "bad_category.json",
            "annotation id 78: category_id 2",
        ),
        ("missing_file.json", "nope.png", "no such image"),
        ("malformed.json", "malformed.json", "line 3 column"),
    ] {
        let ann = fixture(&format!("data/coco/{json}"));
        refused(
            d.path(),
            &[
                "data", "import", "coco", &ann, &imgs, "--size", "8,8", "-o", "e.st",
            ],
            file,
            what,
        );
    }
}

#[test]
fn shapes_are_deterministic_and_their_targets_fit_the_engine() {
    let d = workdir();
    let run = |task: &str, seed: &str, out: &str, extra: &[&str]| {
        let mut a = vec![
            "data", "shapes", "-n", "40", "--size", "32", "--seed", seed, "--task", task,
        ];
        a.extend(extra);
        a.extend(["-o", out]);
        ok(mnemo_in(d.path(), &a))
    };
    run("seg", "3", "seg.st", &[]);
    run("seg", "3", "seg2.st", &[]);
    run("det", "3", "det.st", &["--labels", "80"]);
    run("cls", "3", "cls.st", &[]);
    let bytes = |n: &str| std::fs::read(d.path().join(n)).unwrap();
    // Provenance metadata holds the command line (the output name differs): compare tensors.
    let (s1, s2) = (ds_u8(d.path(), "seg.st"), ds_u8(d.path(), "seg2.st"));
    assert_eq!(s1.1, s2.1);
    assert_eq!(target(d.path(), "seg.st"), target(d.path(), "seg2.st"));
    assert!(!bytes("seg.st").is_empty());
    // seg and det: the same images.
    assert_eq!(s1.1, ds_u8(d.path(), "det.st").1);
    assert_eq!(s1.0, vec![40, 3, 32, 32]);
    let (ts, _, m) = target(d.path(), "seg.st");
    assert_eq!(ts, vec![40, 32, 32]);
    assert!(m.iter().all(|&v| v <= 1) && m.contains(&1));
    let (ts, _, p) = target(d.path(), "det.st");
    assert_eq!(ts, vec![40, 80]);
    for row in p.chunks(80) {
        let n = row.iter().filter(|&&v| v == 1).count();
        assert!((1..=3).contains(&n) && row[5..].iter().all(|&v| v == 0));
    }
    let c = Checkpoint::open(d.path().join("cls.st")).unwrap();
    assert_eq!(
        c.metadata()["mnemo.data.class_names"],
        r#"["circle","square","triangle","cross","diamond"]"#
    );
    for f in ["seg.st", "det.st", "cls.st"] {
        mnemo::data::Dataset::open(d.path().join(f)).unwrap();
    }
    let r = mnemo_in(
        d.path(),
        &["data", "shapes", "-n", "4", "--size", "8", "-o", "x.st"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = mnemo_in(
        d.path(),
        &["data", "shapes", "-n", "4", "--labels", "80", "-o", "x.st"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--labels"), "{}", r.stderr);
}

/// take, shuffle and concat move masks and multi-hot rows with their examples, in their
/// dtype; permute, rotate and split, which need class ids, refuse them naming the file.
#[test]
fn row_tools_carry_masks_and_multi_hot_rows() {
    let d = workdir();
    let p = d.path();
    for (task, n) in [("seg", "12"), ("seg", "5"), ("det", "12"), ("det", "5")] {
        ok(mnemo_in(
            p,
            &[
                "data",
                "shapes",
                "-n",
                n,
                "--size",
                "16",
                "--seed",
                "4",
                "--task",
                task,
                "-o",
                &format!("{task}{n}.safetensors"),
            ],
        ));
    }
    for task in ["seg", "det"] {
        // -n 5 is the first five examples of -n 12: take must give exactly those bytes.
        ok(mnemo_in(
            p,
            &[
                "data",
                "take",
                &format!("{task}12.safetensors"),
                "5",
                "-o",
                "t.safetensors",
            ],
        ));
        let (a, b) = (
            Checkpoint::open(p.join("t.safetensors")).unwrap(),
            Checkpoint::open(p.join(format!("{task}5.safetensors"))).unwrap(),
        );
        for name in ["input", "target"] {
            assert_eq!(a.entry(name).unwrap().dtype, b.entry(name).unwrap().dtype);
            assert_eq!(a.entry(name).unwrap().shape, b.entry(name).unwrap().shape);
            assert_eq!(
                a.bytes(name).unwrap(),
                b.bytes(name).unwrap(),
                "{task} {name}"
            );
        }
        // Shuffled then concatenated: every (input, target) pair survives intact.
        ok(mnemo_in(
            p,
            &[
                "data",
                "shuffle",
                &format!("{task}5.safetensors"),
                "--seed",
                "9",
                "-o",
                "s.safetensors",
            ],
        ));
        ok(mnemo_in(
            p,
            &[
                "data",
                "concat",
                "s.safetensors",
                "t.safetensors",
                "-o",
                "c.safetensors",
            ],
        ));
        let c = Checkpoint::open(p.join("c.safetensors")).unwrap();
        let (ci, ct) = (c.bytes("input").unwrap(), c.bytes("target").unwrap());
        let (bi, bt) = (b.bytes("input").unwrap(), b.bytes("target").unwrap());
        let (ri, rt) = (bi.len() / 5, bt.len() / 5);
        assert_eq!(ci.len(), 2 * bi.len());
        for k in 0..10 {
            let row = &ci[k * ri..(k + 1) * ri];
            let j = (0..5)
                .find(|&j| &bi[j * ri..(j + 1) * ri] == row)
                .unwrap_or_else(|| panic!("{task}: example {k} is not an input of the source"));
            assert_eq!(
                &ct[k * rt..(k + 1) * rt],
                &bt[j * rt..(j + 1) * rt],
                "{task} {k}"
            );
        }
        let moved = (0..5).any(|k| ci[k * ri..(k + 1) * ri] != bi[k * ri..(k + 1) * ri]);
        assert!(moved, "{task}: the shuffle kept the order");
        for args in [
            vec![
                "permute",
                "s.safetensors",
                "--seed",
                "1",
                "-o",
                "x.safetensors",
            ],
            vec![
                "rotate",
                "s.safetensors",
                "--degrees",
                "10",
                "-o",
                "x.safetensors",
            ],
            vec![
                "split",
                "s.safetensors",
                "--classes",
                "0",
                "-o",
                "x.safetensors",
            ],
        ] {
            let mut a = vec!["data"];
            a.extend(args);
            let r = mnemo_in(p, &a);
            assert_eq!(r.code, 2, "{a:?}: {}", r.stderr);
            assert!(r.stderr.contains("s.safetensors"), "{}", r.stderr);
            assert!(!p.join("x.safetensors").exists());
        }
    }
    // Masks and multi-hot rows do not mix.
    let r = mnemo_in(
        p,
        &[
            "data",
            "concat",
            "seg5.safetensors",
            "det5.safetensors",
            "-o",
            "x.safetensors",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("det5.safetensors"), "{}", r.stderr);
}

/// `data pad`: a flat MNIST-like input padded through --shape stays flat, with the image in
/// the middle and zeros around it; masks and a flat input without --shape are refused.
#[test]
fn pad_puts_zero_borders_around_every_image() {
    let d = workdir();
    let p = d.path();
    let src = fixture("mnist-small/test.safetensors");
    ok(mnemo_in(
        p,
        &[
            "data",
            "pad",
            &src,
            "--pad",
            "2",
            "--shape",
            "28,28",
            "-o",
            "p.safetensors",
        ],
    ));
    let (a, b) = (
        Checkpoint::open(&src).unwrap(),
        Checkpoint::open(p.join("p.safetensors")).unwrap(),
    );
    let n = a.entry("input").unwrap().shape[0];
    assert_eq!(b.entry("input").unwrap().shape, vec![n, 32 * 32]);
    assert_eq!(a.bytes("target").unwrap(), b.bytes("target").unwrap());
    let (x, y) = (a.bytes("input").unwrap(), b.bytes("input").unwrap());
    for i in [0, n / 2, n - 1] {
        for r in 0..32 {
            for c in 0..32 {
                let got = y[i * 1024 + r * 32 + c];
                let want = if (2..30).contains(&r) && (2..30).contains(&c) {
                    x[i * 784 + (r - 2) * 28 + (c - 2)]
                } else {
                    0
                };
                assert_eq!(got, want, "example {i} at ({r}, {c})");
            }
        }
    }
    let r = mnemo_in(
        p,
        &["data", "pad", &src, "--pad", "2", "-o", "x.safetensors"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--shape"), "{}", r.stderr);
    ok(mnemo_in(
        p,
        &[
            "data",
            "shapes",
            "-n",
            "2",
            "--size",
            "16",
            "--task",
            "seg",
            "-o",
            "m.safetensors",
        ],
    ));
    let r = mnemo_in(
        p,
        &[
            "data",
            "pad",
            "m.safetensors",
            "--pad",
            "1",
            "-o",
            "x.safetensors",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!p.join("x.safetensors").exists());
}

/// `data normalize` is torchvision's `ToTensor()` + `Normalize(mean, std)` bit for bit
/// (fixtures/data/gen.py), keeps the targets, and refuses statistics that do not fit.
#[test]
fn normalize_matches_torchvision_bit_for_bit() {
    let d = workdir();
    let dir = d.path();
    rot_dataset(dir, "norm_u8.npy", "u8.st");
    ok(mnemo_in(
        dir,
        &["data", "normalize", "u8.st", "--imagenet", "-o", "n.st"],
    ));
    let c = Checkpoint::open(dir.join("n.st")).unwrap();
    assert_eq!(c.entry("input").unwrap().dtype.to_string(), "F32");
    let (shape, _, y) = ds(dir, "n.st");
    let (want_shape, want) = npy("norm_u8_imagenet.npy");
    assert_eq!((shape, y), (want_shape, vec![3, 2, 1, 0]));
    assert_eq!(f32s(c.bytes("input").unwrap()), f32s(&want));
    // The same statistics spelled out give the same bytes.
    ok(mnemo_in(
        dir,
        &[
            "data",
            "normalize",
            "u8.st",
            "--mean",
            "0.485,0.456,0.406",
            "--std",
            "0.229,0.224,0.225",
            "-o",
            "m.st",
        ],
    ));
    assert_eq!(
        Checkpoint::open(dir.join("m.st"))
            .unwrap()
            .bytes("input")
            .unwrap(),
        c.bytes("input").unwrap()
    );
    // F32 input, one (negative) mean for every channel.
    rot_dataset(dir, "norm_f32.npy", "f.st");
    ok(mnemo_in(
        dir,
        &[
            "data",
            "normalize",
            "f.st",
            "--mean",
            "-1",
            "--std",
            "2",
            "-o",
            "nf.st",
        ],
    ));
    let got = f32s(
        Checkpoint::open(dir.join("nf.st"))
            .unwrap()
            .bytes("input")
            .unwrap(),
    );
    assert_eq!(got, f32s(&npy("norm_f32_m1_s2.npy").1));
    // Statistics that do not fit the channels, or a std that is not positive: exit 2, nothing written.
    for (args, words) in [
        (
            &["--mean", "0.5,0.5", "--std", "1"][..],
            "2 mean values for 3 channels",
        ),
        (&["--mean", "0", "--std", "0"][..], "--std"),
        (&["--mean", "0"][..], "--std"),
        (
            &["--imagenet", "--mean", "0", "--std", "1"][..],
            "cannot be used with",
        ),
        (&[][..], "--mean"),
    ] {
        let mut a = vec!["data", "normalize", "u8.st"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "bad.st"]);
        let r = mnemo_in(dir, &a);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(words), "{args:?}: {}", r.stderr);
        assert!(!dir.join("bad.st").exists());
    }
}
