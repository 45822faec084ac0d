//! Per-layer conv2d timing for bench/conv.sh: forward + backward (loss Σ y·g, gradients with
//! respect to input and weight) of mnemo's host kernel (`mnemo::model::conv::conv2d`) and of
//! candle's own conv2d, on tensors written by bench/conv.py.
//!
//! Usage: conv_bench TENSORS.safetensors OUT.safetensors REPS NAME:STRIDE:PADDING:GROUPS...
//! Reads NAME.x, NAME.w, NAME.g; prints one JSON object per layer and implementation (the
//! fastest of REPS after one warm-up: on a shared machine the minimum is the stable
//! statistic) and writes mnemo's NAME.y, NAME.dx, NAME.dw to OUT so
//! that the script can check them against torch.

use candle_core::{Device, Result, Tensor, Var};
use std::collections::HashMap;
use std::time::Instant;

type Conv = dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;

fn step(conv: &Conv, x: &Var, w: &Var, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let y = conv(x.as_tensor(), w.as_tensor())?;
    let grads = (&y * g)?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).expect("input gradient").clone();
    let dw = grads.get(w.as_tensor()).expect("weight gradient").clone();
    Ok((y, dx, dw))
}

fn main() -> Result<()> {
    // The thread set-up of src/main.rs: rayon one thread per CPU, candle's spinning pool none.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: conv_bench TENSORS OUT REPS NAME:STRIDE:PADDING:GROUPS...");
        std::process::exit(2);
    }
    let tensors = candle_core::safetensors::load(&args[1], &Device::Cpu)?;
    let reps: usize = args[3].parse().expect("REPS");
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for spec in &args[4..] {
        let f: Vec<&str> = spec.split(':').collect();
        let name = f[0];
        let (s, p, groups): (usize, usize, usize) = (
            f[1].parse().expect("stride"),
            f[2].parse().expect("padding"),
            f[3].parse().expect("groups"),
        );
        let get = |k: &str| tensors[&format!("{name}.{k}")].clone();
        let (x, w, g) = (
            Var::from_tensor(&get("x"))?,
            Var::from_tensor(&get("w"))?,
            get("g"),
        );
        let ours = move |x: &Tensor, w: &Tensor| mnemo::model::conv::conv2d(x, w, p, s, groups);
        let candle = move |x: &Tensor, w: &Tensor| x.conv2d(w, p, s, 1, groups);
        let impls: [(&str, &Conv); 2] = [("mnemo", &ours), ("candle", &candle)];
        // The loss around the conv (Σ y·g and its backward through candle's autograd) costs
        // both candle columns alike: timed alone, on a variable of the output's shape.
        let yv = Var::from_tensor(&g.zeros_like()?)?;
        let mut harness: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let t = Instant::now();
                (yv.as_tensor() * &g)
                    .and_then(|l| l.sum_all())
                    .and_then(|l| l.backward())
                    .map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        harness.sort_by(f64::total_cmp);
        println!(
            "{{\"layer\":\"{name}\",\"impl\":\"harness\",\"seconds\":{}}}",
            harness[0]
        );
        for (which, conv) in impls {
            let (y, dx, dw) = step(conv, &x, &w, &g)?;
            if which == "mnemo" {
                out.insert(format!("{name}.y"), y);
                out.insert(format!("{name}.dx"), dx);
                out.insert(format!("{name}.dw"), dw);
            }
            let mut times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    step(conv, &x, &w, &g).map(|_| t.elapsed().as_secs_f64())
                })
                .collect::<Result<_>>()?;
            times.sort_by(f64::total_cmp);
            println!(
                "{{\"layer\":\"{name}\",\"impl\":\"{which}\",\"seconds\":{}}}",
                times[0]
            );
        }
    }
    candle_core::safetensors::save(&out, &args[2])?;
    Ok(())
}
