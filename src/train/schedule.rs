//! Learning-rate schedules, in closed form so that a resumed run lands on
//! exactly the rate an uninterrupted one would use. Each matches the torch
//! scheduler named beside it when that scheduler is stepped once per unit
//! (optimizer step or epoch).

/// The shape of the schedule after warm-up.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleKind {
    /// The base rate throughout.
    Constant,
    /// `torch.optim.lr_scheduler.StepLR`: base·γ^⌊t/step_size⌋.
    Step { step_size: usize, gamma: f64 },
    /// `CosineAnnealingLR`: η_min + (base − η_min)(1 + cos(π·t/T_max))/2; T_max defaults to
    /// the run's length after warm-up.
    Cosine { t_max: Option<usize>, eta_min: f64 },
    /// `CosineAnnealingWarmRestarts`: cosine over periods T₀, T₀·T_mult, T₀·T_mult², …
    CosineRestarts {
        t0: usize,
        t_mult: usize,
        eta_min: f64,
    },
}

/// What the schedule's clock counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleUnit {
    /// Optimizer steps (the scheduler stepped after every update).
    Step,
    /// Epochs (the scheduler stepped at the end of each epoch).
    Epoch,
}

/// A schedule with optional linear warm-up: for t < W the rate is base·(t+1)/W (torch's
/// `LinearLR(start_factor=1/W, total_iters=W−1)`), then the main schedule runs on t − W
/// (as `SequentialLR` with milestone W).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub unit: ScheduleUnit,
    pub warmup: usize,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            kind: ScheduleKind::Constant,
            unit: ScheduleUnit::Step,
            warmup: 0,
        }
    }
}

fn cosine(base: f64, eta_min: f64, t: f64, period: f64) -> f64 {
    eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t / period).cos()) / 2.0
}

impl Schedule {
    /// The rate at clock value `t` (0-based) of a run whose clock reaches `total`.
    pub fn lr(&self, base: f64, t: usize, total: usize) -> f64 {
        if t < self.warmup {
            return base * (t + 1) as f64 / self.warmup as f64;
        }
        let t = t - self.warmup;
        match &self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step { step_size, gamma } => {
                base * gamma.powi((t / (*step_size).max(1)) as i32)
            }
            ScheduleKind::Cosine { t_max, eta_min } => {
                let period = t_max.unwrap_or(total.saturating_sub(self.warmup)).max(1);
                // torch's closed form keeps going past T_max (the cosine climbs back).
                cosine(base, *eta_min, t as f64, period as f64)
            }
            ScheduleKind::CosineRestarts {
                t0,
                t_mult,
                eta_min,
            } => {
                let (t0, mult) = ((*t0).max(1), (*t_mult).max(1));
                let (mut start, mut period) = (0usize, t0);
                while t >= start + period {
                    start += period;
                    period *= mult;
                }
                cosine(base, *eta_min, (t - start) as f64, period as f64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: usize) -> Schedule {
        Schedule {
            kind,
            unit: ScheduleUnit::Step,
            warmup,
        }
    }

    #[test]
    fn step_decay() {
        let s = sched(
            ScheduleKind::Step {
                step_size: 2,
                gamma: 0.5,
            },
            0,
        );
        let lrs: Vec<f64> = (0..5).map(|t| s.lr(1.0, t, 5)).collect();
        assert_eq!(lrs, vec![1.0, 1.0, 0.5, 0.5, 0.25]);
    }

    #[test]
    fn warmup_then_cosine_reaches_eta_min_at_the_end() {
        let s = sched(
            ScheduleKind::Cosine {
                t_max: None,
                eta_min: 0.1,
            },
            4,
        );
        assert_eq!(s.lr(1.0, 0, 14), 0.25);
        assert_eq!(s.lr(1.0, 3, 14), 1.0);
        assert_eq!(s.lr(1.0, 4, 14), 1.0);
        assert!((s.lr(1.0, 14, 14) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 9, 14) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn restarts_double_the_period() {
        let s = sched(
            ScheduleKind::CosineRestarts {
                t0: 2,
                t_mult: 2,
                eta_min: 0.0,
            },
            0,
        );
        // Periods [0,2), [2,6), [6,14): a restart at 2 and at 6.
        assert_eq!(s.lr(1.0, 0, 0), 1.0);
        assert_eq!(s.lr(1.0, 2, 0), 1.0);
        assert!((s.lr(1.0, 4, 0) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 6, 0), 1.0);
    }
}
