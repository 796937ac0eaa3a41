//! Synthetic workloads, seeded: the same name, parameters and seed give
//! the same requests.
//!
//! The models are the config's first `models` (default: all of them).
//! Parameters (`--param k=v`): `models`, `switch_secs` (every backend's
//! wake time, default 10), `sleep_secs` (2), `concurrency` (4),
//! `duration_secs` (600), `rate` (requests per second, overall; 1),
//! `service_secs` (mean service time, exponential; 1), `timeout_secs`
//! (none), and per scenario: `hot` (skewed: the hot model's share, 0.9),
//! `burst` and `burst_every` (bursty: requests per burst, 20, and seconds
//! between bursts, 60), `think_secs` (agents: mean think time, 5),
//! `period` (llama_swap_612: seconds between bursts, 120).
//!
//! The agents scenario is a closed loop: each agent's next request comes a
//! think time after its previous one ended, so a wait delays every later
//! call of that agent (as it does a real agent).

use std::collections::BTreeMap;
use std::time::Duration;

use super::trace::{Backend, Follow, Request, Workload};
use crate::clock::Time;

/// The scenarios, by name.
pub const NAMES: [&str; 5] = ["poisson", "skewed", "bursty", "agents", "llama_swap_612"];

/// splitmix64: a tiny deterministic generator (no crate, no OS entropy).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with this mean: -ln(u) * mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -self.unit().ln() * mean
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A scenario's parameters, with their defaults.
struct Params {
    values: BTreeMap<String, f64>,
}

impl Params {
    fn get(&self, key: &str, default: f64) -> f64 {
        self.values.get(key).copied().unwrap_or(default)
    }
}

/// Every parameter a scenario reads.
const KEYS: [&str; 13] = [
    "models",
    "switch_secs",
    "sleep_secs",
    "concurrency",
    "duration_secs",
    "rate",
    "service_secs",
    "timeout_secs",
    "hot",
    "burst",
    "burst_every",
    "think_secs",
    "period",
];

fn parse_params(params: &[(String, String)]) -> Result<Params, String> {
    let mut values = BTreeMap::new();
    for (k, v) in params {
        if !KEYS.contains(&k.as_str()) {
            return Err(format!("--param {k}: unknown (one of {})", KEYS.join(", ")));
        }
        let x: f64 = v.parse().map_err(|_| format!("--param {k}={v}: not a number"))?;
        if !x.is_finite() || x < 0.0 {
            return Err(format!("--param {k}={v}: must be a finite number of at least 0"));
        }
        values.insert(k.clone(), x);
    }
    Ok(Params { values })
}

/// The workload of scenario `name` over the config's models `names`.
pub fn generate(name: &str, params: &[(String, String)], seed: u64, names: &[String]) -> Result<Workload, String> {
    let p = parse_params(params)?;
    let n = p.get("models", names.len() as f64) as usize;
    if n == 0 || n > names.len() {
        return Err(format!("--param models={n}: the config has {} models", names.len()));
    }
    let min_models = if name == "llama_swap_612" {
        3
    } else if name == "agents" {
        2
    } else {
        1
    };
    if n < min_models {
        return Err(format!("scenario {name} needs at least {min_models} models, not {n}"));
    }
    let backend = Backend {
        wake: Duration::from_secs_f64(p.get("switch_secs", super::trace::DEFAULT_WAKE_SECS)),
        sleep: Duration::from_secs_f64(p.get("sleep_secs", super::trace::DEFAULT_SLEEP_SECS)),
        concurrency: (p.get("concurrency", super::trace::DEFAULT_CONCURRENCY as f64) as usize).max(1),
    };
    let mut g = Gen { rng: Rng::new(seed), p: &p, n, out: Vec::new(), last_gap: Duration::ZERO };
    match name {
        "poisson" => g.poisson(),
        "skewed" => g.skewed(),
        "bursty" => g.bursty(),
        "agents" => g.agents(),
        "llama_swap_612" => g.llama_swap_612(),
        other => return Err(format!("unknown scenario `{other}` (one of {})", NAMES.join(", "))),
    }
    let requests = in_order(g.out);
    Ok(Workload { backends: vec![backend; names.len()], requests, ..Workload::default() })
}

/// `requests` sorted by arrival, stably (generators that interleave
/// streams emit out of order), with follow-ups pointing to their
/// predecessors' new places.
fn in_order(requests: Vec<Request>) -> Vec<Request> {
    let mut order: Vec<u32> = (0..requests.len() as u32).collect();
    order.sort_by_key(|&i| requests[i as usize].at);
    let mut place = vec![0u32; requests.len()];
    for (new, &old) in order.iter().enumerate() {
        place[old as usize] = new as u32;
    }
    order
        .iter()
        .map(|&old| {
            let mut r = requests[old as usize];
            if let Some(f) = r.follows.as_mut() {
                f.prev = place[f.prev as usize];
            }
            r
        })
        .collect()
}

struct Gen<'a> {
    rng: Rng,
    p: &'a Params,
    n: usize,
    out: Vec<Request>,
    /// The think time drawn after the last request of a chain.
    last_gap: Duration,
}

impl Gen<'_> {
    fn duration(&self) -> f64 {
        self.p.get("duration_secs", 600.0)
    }

    fn rate(&self) -> f64 {
        self.p.get("rate", 1.0).max(1e-9)
    }

    fn push(&mut self, t: f64, model: usize) {
        let service = self.rng.exp(self.p.get("service_secs", 1.0));
        let timeout = self.p.values.get("timeout_secs").map(|&s| Duration::from_secs_f64(s));
        self.out.push(Request {
            at: Time::from_secs_f64(t),
            model: model as u32,
            service: Duration::from_secs_f64(service),
            timeout,
            follows: None,
        });
    }

    /// Poisson arrivals at `rate`, each model picked by `pick`.
    fn arrivals(&mut self, rate: f64, mut pick: impl FnMut(&mut Rng, usize) -> usize) {
        let mut t = self.rng.exp(1.0 / rate);
        while t < self.duration() {
            let model = pick(&mut self.rng, self.n);
            self.push(t, model);
            t += self.rng.exp(1.0 / rate);
        }
    }

    fn poisson(&mut self) {
        self.arrivals(self.rate(), |rng, n| rng.below(n));
    }

    fn skewed(&mut self) {
        let hot = self.p.get("hot", 0.9).min(1.0);
        self.arrivals(self.rate(), |rng, n| if n == 1 || rng.unit() <= hot { 0 } else { 1 + rng.below(n - 1) });
    }

    /// Background Poisson traffic plus, every `burst_every` seconds, a
    /// burst of `burst` requests for one random model within a second.
    fn bursty(&mut self) {
        self.arrivals(self.rate(), |rng, n| rng.below(n));
        let (size, every) = (self.p.get("burst", 20.0) as usize, self.p.get("burst_every", 60.0).max(1e-3));
        let mut start = self.rng.exp(every);
        while start < self.duration() {
            let model = self.rng.below(self.n);
            let mut t = start;
            for _ in 0..size {
                self.push(t, model);
                t += self.rng.exp(1.0 / size.max(1) as f64);
            }
            start += self.rng.exp(every);
        }
    }

    /// Two agents, on models 0 and 1, each a closed loop: request, reply,
    /// think, again. A call is sent only once the previous one has ended
    /// (its wait included), a think time later; as many calls as fit in
    /// `duration_secs` had nobody waited.
    fn agents(&mut self) {
        let think = self.p.get("think_secs", 5.0);
        for agent in 0..2 {
            let mut t = self.rng.exp(think);
            let mut prev: Option<u32> = None;
            while t < self.duration() {
                let service = self.rng.exp(self.p.get("service_secs", 1.0));
                let gap = self.rng.exp(think);
                let timeout = self.p.values.get("timeout_secs").map(|&s| Duration::from_secs_f64(s));
                let at = Time::from_secs_f64(t);
                let service = Duration::from_secs_f64(service);
                let follows = prev.map(|prev| Follow { prev, think: self.last_gap });
                prev = Some(self.out.len() as u32);
                self.out.push(Request { at, model: agent, service, timeout, follows });
                self.last_gap = Duration::from_secs_f64(gap);
                t += service.as_secs_f64() + gap;
            }
        }
    }

    /// llama-swap issue 612's pattern, "A B A A C A B C", a request every
    /// 0.1 s, repeated every `period` seconds.
    fn llama_swap_612(&mut self) {
        const PATTERN: [usize; 8] = [0, 1, 0, 0, 2, 0, 1, 2];
        let period = self.p.get("period", 120.0).max(1e-3);
        let mut start = 0.0;
        while start < self.duration() {
            for (i, &model) in PATTERN.iter().enumerate() {
                self.push(start + i as f64 * 0.1, model);
            }
            start += period;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_requests() {
        for name in NAMES {
            let a = generate(name, &[], 7, &names(3)).expect(name);
            let b = generate(name, &[], 7, &names(3)).expect(name);
            assert_eq!(a, b, "{name}");
            assert!(!a.requests.is_empty(), "{name}");
            assert!(a.requests.windows(2).all(|w| w[0].at <= w[1].at), "{name} in order");
        }
        assert_ne!(generate("poisson", &[], 1, &names(3)), generate("poisson", &[], 2, &names(3)));
    }

    #[test]
    fn parameters_are_checked() {
        let p = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(generate("poisson", &p("models", "4"), 1, &names(3)).is_err());
        assert!(generate("poisson", &p("bogus", "1"), 1, &names(3)).is_err());
        assert!(generate("poisson", &p("rate", "x"), 1, &names(3)).is_err());
        assert!(generate("llama_swap_612", &[], 1, &names(2)).is_err());
        assert!(generate("nope", &[], 1, &names(2)).is_err());
        let w = generate("poisson", &p("rate", "10"), 1, &names(3)).expect("ok");
        assert!((5000..7000).contains(&w.requests.len()), "{} requests for 600 s at 10/s", w.requests.len());
    }
}
