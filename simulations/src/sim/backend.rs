//! Simulated upstreams: queueing servers with a concurrency, a bounded queue and a service
//! time distribution, and the faults injected into them. This is the simulator's model of the
//! world outside the proxy, so it is the one place here with arithmetic of its own.

use super::scenario::BackendSpec;
use std::collections::VecDeque;
use vivremotion_protocol::Nanos;

/// The random draws of one try, fixed by (seed, request, attempt) so that every policy sees
/// the same service time for the same try.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    /// Standard normal (service time).
    pub z: f64,
    /// Uniform [0, 1) (error burst).
    pub u_error: f64,
    /// Uniform [0, 1) (latency spike).
    pub u_spike: f64,
}

/// A try inside a backend.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub req: u32,
    pub token: u64,
    pub draws: Draws,
    /// The trace's own service time, if the backend uses it.
    pub trace_ns: Option<u64>,
}

/// What the backend does with an arriving try.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrive {
    /// Connection refused (crashed): a connect failure, now.
    Refused,
    /// Answered `status` at once (an error burst, or the queue is full: 503).
    Status(u16),
    /// Being served: done at `done`, in `slot`.
    Started { done: Nanos, slot: u32, epoch: u32 },
    /// Waiting for a free server.
    Queued,
}

/// Faults in force on one backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultState {
    pub crashed: bool,
    /// Service time ×.
    pub slow: f64,
    /// Concurrency ×.
    pub capacity: f64,
    /// (status, share) answered at once.
    pub errors: Option<(u16, f64)>,
    /// (extra ns, share).
    pub spike: Option<(u64, f64)>,
    /// Linear growth of service time: from `start` to `end` the factor goes 1 → `factor`.
    pub ramp: Option<(Nanos, Nanos, f64)>,
}

pub struct Backend {
    pub address: String,
    concurrency: u32,
    queue_cap: usize,
    median_ns: f64,
    sigma: f64,
    /// Median of the trace's service times, for scaling them to `median_ns`.
    trace_median_ns: Option<f64>,
    pub faults: FaultState,
    busy: u32,
    queue: VecDeque<Job>,
    /// Jobs in service, by slot; `None` where free.
    serving: Vec<Option<Job>>,
    free: Vec<u32>,
    /// Bumped at each crash: completions of an older epoch are void.
    epoch: u32,
}

impl Backend {
    pub fn new(spec: &BackendSpec, trace_median_ns: Option<f64>) -> Backend {
        Backend {
            address: spec.address.clone(),
            concurrency: spec.concurrency,
            queue_cap: spec.queue as usize,
            median_ns: spec.service.median.as_nanos() as f64,
            sigma: spec.service.sigma,
            trace_median_ns: trace_median_ns.filter(|_| spec.service.from_trace),
            faults: FaultState {
                slow: 1.0,
                capacity: 1.0,
                ..FaultState::default()
            },
            busy: 0,
            queue: VecDeque::new(),
            serving: Vec::new(),
            free: Vec::new(),
            epoch: 0,
        }
    }

    fn servers(&self) -> u32 {
        ((f64::from(self.concurrency) * self.faults.capacity).round() as u32).max(1)
    }

    /// How long `job` takes if it starts now.
    fn service_ns(&self, job: &Job, now: Nanos) -> u64 {
        let base = match (job.trace_ns, self.trace_median_ns) {
            (Some(t), Some(m)) if m > 0.0 => t as f64 * self.median_ns / m,
            _ => self.median_ns * (self.sigma * job.draws.z).exp(),
        };
        let mut f = self.faults.slow;
        if let Some((from, to, k)) = self.faults.ramp {
            f *= super::scenario::ramp(k, from.0, to.0.saturating_sub(from.0), now.0);
        }
        let mut ns = base * f;
        if let Some((extra, share)) = self.faults.spike {
            if job.draws.u_spike < share {
                ns += extra as f64;
            }
        }
        ns.max(1.0) as u64
    }

    /// A try arrives at `now`.
    pub fn arrive(&mut self, job: Job, now: Nanos) -> Arrive {
        if self.faults.crashed {
            return Arrive::Refused;
        }
        if let Some((status, share)) = self.faults.errors {
            if job.draws.u_error < share {
                return Arrive::Status(status);
            }
        }
        if self.busy < self.servers() {
            return self.start(job, now);
        }
        if self.queue.len() < self.queue_cap {
            self.queue.push_back(job);
            return Arrive::Queued;
        }
        Arrive::Status(503)
    }

    fn start(&mut self, job: Job, now: Nanos) -> Arrive {
        let done = Nanos(now.0.saturating_add(self.service_ns(&job, now)));
        self.busy += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.serving[s as usize] = Some(job);
                s
            }
            None => {
                self.serving.push(Some(job));
                (self.serving.len() - 1) as u32
            }
        };
        Arrive::Started {
            done,
            slot,
            epoch: self.epoch,
        }
    }

    /// The job in `slot` finished at `now`. Returns it (unless void: the backend crashed
    /// since), and the queued jobs that start in the freed capacity, with their starts.
    pub fn complete(
        &mut self,
        slot: u32,
        epoch: u32,
        now: Nanos,
        started: &mut Vec<(Job, Arrive)>,
    ) -> Option<Job> {
        if epoch != self.epoch {
            return None;
        }
        let job = self.serving.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.busy = self.busy.saturating_sub(1);
        self.pump(now, started);
        Some(job)
    }

    /// Start queued jobs while there are free servers (after a completion or when capacity
    /// comes back).
    pub fn pump(&mut self, now: Nanos, started: &mut Vec<(Job, Arrive)>) {
        while self.busy < self.servers() {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            let a = self.start(job, now);
            started.push((job, a));
        }
    }

    /// A crash: every job in service or queued is lost (the proxy sees its connection reset).
    pub fn crash(&mut self, lost: &mut Vec<Job>) {
        self.faults.crashed = true;
        self.epoch = self.epoch.wrapping_add(1);
        lost.extend(self.serving.iter_mut().filter_map(Option::take));
        lost.extend(self.queue.drain(..));
        self.serving.clear();
        self.free.clear();
        self.busy = 0;
    }

    /// What an active health check sees.
    pub fn healthy(&self) -> bool {
        !self.faults.crashed
            && !matches!(self.faults.errors, Some((s, share)) if s >= 500 && share >= 0.5)
    }

    pub fn in_service(&self) -> u32 {
        self.busy
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::ServiceSpec;
    use std::time::Duration;

    fn backend(concurrency: u32, queue: u32) -> Backend {
        Backend::new(
            &BackendSpec {
                address: "b".into(),
                concurrency,
                queue,
                service: ServiceSpec {
                    median: Duration::from_millis(10),
                    sigma: 0.0,
                    from_trace: false,
                },
            },
            None,
        )
    }

    fn job(req: u32) -> Job {
        Job {
            req,
            token: u64::from(req),
            draws: Draws {
                z: 0.0,
                u_error: 0.5,
                u_spike: 0.5,
            },
            trace_ns: None,
        }
    }

    #[test]
    fn serves_queues_and_refuses_beyond_the_queue() {
        let mut b = backend(1, 1);
        let t0 = Nanos(0);
        let Arrive::Started { done, slot, epoch } = b.arrive(job(1), t0) else {
            panic!("first job should start");
        };
        assert_eq!(done, Nanos(10_000_000));
        assert_eq!(b.arrive(job(2), t0), Arrive::Queued);
        assert_eq!(b.arrive(job(3), t0), Arrive::Status(503));
        let mut started = Vec::new();
        let j = b.complete(slot, epoch, done, &mut started);
        assert_eq!(j.map(|j| j.req), Some(1));
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].0.req, 2);
        assert!(matches!(started[0].1, Arrive::Started { done, .. } if done == Nanos(20_000_000)));
    }

    #[test]
    fn a_crash_loses_everything_and_voids_completions() {
        let mut b = backend(2, 5);
        let Arrive::Started { slot, epoch, .. } = b.arrive(job(1), Nanos(0)) else {
            panic!("should start");
        };
        b.arrive(job(2), Nanos(0));
        b.arrive(job(3), Nanos(0));
        let mut lost = Vec::new();
        b.crash(&mut lost);
        assert_eq!(lost.len(), 3);
        assert_eq!(b.arrive(job(4), Nanos(1)), Arrive::Refused);
        assert!(b.complete(slot, epoch, Nanos(2), &mut Vec::new()).is_none());
    }

    #[test]
    fn slowdown_ramp_and_spike_change_service_times() {
        let mut b = backend(10, 0);
        b.faults.slow = 10.0;
        let Arrive::Started { done, .. } = b.arrive(job(1), Nanos(0)) else {
            panic!("should start");
        };
        assert_eq!(done, Nanos(100_000_000));
        b.faults.slow = 1.0;
        b.faults.ramp = Some((Nanos(0), Nanos(1_000), 3.0));
        let Arrive::Started { done, .. } = b.arrive(job(2), Nanos(500)) else {
            panic!("should start");
        };
        // Halfway through the ramp: ×2.
        assert_eq!(done.0 - 500, 20_000_000);
        b.faults.ramp = None;
        b.faults.spike = Some((5_000_000, 0.6));
        let Arrive::Started { done, .. } = b.arrive(job(3), Nanos(0)) else {
            panic!("should start");
        };
        assert_eq!(done, Nanos(15_000_000));
    }
}
