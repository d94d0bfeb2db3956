//! A bounded pool for argon2id: a fixed number of worker threads, each with its own memory
//! block allocated once and reused, and a bounded queue in front of them.
//!
//! Each argon2id check uses its full memory cost (19 MiB at the default parameters) while it
//! runs. On tokio's blocking pool (unbounded) concurrent sign-ins each allocated their own
//! block, so memory grew with the load and stayed high after it. Here memory is bounded by
//! workers × memory cost; sign-ins beyond the queue are refused at once with
//! [`HashError::Busy`] (the caller shows "try again in a moment"), never an out-of-memory.
//! No crate offers this for argon2, so the pool is ours: std threads and a sync channel.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

use crate::telemetry::metrics::names;

/// Why a hash could not be computed or checked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HashError {
    /// Every worker is busy and the queue is full.
    #[error("too many password checks at once")]
    Busy,
    /// The pool stopped (the process is shutting down).
    #[error("the password hashing pool stopped")]
    Stopped,
    /// The inputs could not be hashed.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// What a worker is asked to do.
enum Task {
    /// Hash a new password into a PHC string.
    Hash(SecretString),
    /// Whether the password matches any of these PHC hashes (a malformed one never does).
    Verify(SecretString, Vec<String>),
}

struct Job {
    task: Task,
    reply: oneshot::Sender<Result<Outcome, HashError>>,
}

enum Outcome {
    Hashed(String),
    Matched(bool),
}

/// The pool's handle; cheap to clone.
#[derive(Clone)]
pub struct HashPool {
    jobs: SyncSender<Job>,
    workers: usize,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl HashPool {
    /// Starts `workers` threads (at least one) behind a queue of `queue` waiting checks. A
    /// thread that cannot be started is logged; with none, every check answers `Stopped`.
    pub fn start(workers: usize, queue: usize) -> Self {
        let wanted = workers.max(1);
        let (jobs, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut started = 0;
        for n in 0..wanted {
            let receiver = receiver.clone();
            match std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&receiver))
            {
                Ok(_) => started += 1,
                Err(err) => tracing::error!(%err, "cannot start a password hashing thread"),
            }
        }
        Self {
            jobs,
            workers: started,
        }
    }

    /// One worker per core.
    pub fn per_core(queue: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::start(cores, queue)
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Hashes a new password (argon2id, random salt, PHC string).
    pub async fn hash(&self, password: &SecretString) -> Result<String, HashError> {
        match self.run(Task::Hash(password.clone())).await? {
            Outcome::Hashed(hash) => Ok(hash),
            Outcome::Matched(_) => Err(HashError::Failed("unexpected answer".into())),
        }
    }

    /// Whether `password` matches `hash`.
    pub async fn verify(&self, password: &SecretString, hash: &str) -> Result<bool, HashError> {
        self.verify_any(password, vec![hash.to_string()]).await
    }

    /// Whether `password` matches any of `hashes` (the password history).
    pub async fn verify_any(
        &self,
        password: &SecretString,
        hashes: Vec<String>,
    ) -> Result<bool, HashError> {
        match self.run(Task::Verify(password.clone(), hashes)).await? {
            Outcome::Matched(matched) => Ok(matched),
            Outcome::Hashed(_) => Err(HashError::Failed("unexpected answer".into())),
        }
    }

    async fn run(&self, task: Task) -> Result<Outcome, HashError> {
        let (reply, answer) = oneshot::channel();
        // Counted before sending: a worker may take the job (and uncount it) at once.
        let queued = metrics::gauge!(names::HASHES_QUEUED);
        queued.increment(1.0);
        match self.jobs.try_send(Job { task, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                queued.decrement(1.0);
                metrics::counter!(names::HASHES_REFUSED).increment(1);
                return Err(HashError::Busy);
            }
            Err(TrySendError::Disconnected(_)) => {
                queued.decrement(1.0);
                return Err(HashError::Stopped);
            }
        }
        answer.await.map_err(|_| HashError::Stopped)?
    }
}

/// A worker: takes jobs until the pool is dropped, reusing one memory block.
fn work(receiver: &Mutex<Receiver<Job>>) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let Ok(receiver) = receiver.lock() else {
                return;
            };
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // Queued and in flight are gauges moved here, not read from the channel: std's
        // channel cannot say how many jobs it holds.
        metrics::gauge!(names::HASHES_QUEUED).decrement(1.0);
        let in_flight = metrics::gauge!(names::HASHES_IN_FLIGHT);
        in_flight.increment(1.0);
        let result = match job.task {
            Task::Hash(password) => hash_with(&mut memory, &password).map(Outcome::Hashed),
            Task::Verify(password, hashes) => Ok(Outcome::Matched(
                hashes
                    .iter()
                    .any(|h| verify_with(&mut memory, &password, h)),
            )),
        };
        in_flight.decrement(1.0);
        // The caller may have gone (a closed connection): nothing to tell.
        let _ = job.reply.send(result);
    }
}

/// The block for `params`, grown (once) if the stored hash asks for more memory.
fn blocks_for<'m>(memory: &'m mut Vec<Block>, params: &Params) -> &'m mut [Block] {
    let count = params.block_count();
    if memory.len() < count {
        memory.resize(count, Block::default());
    }
    memory.get_mut(..count).unwrap_or_default()
}

fn hash_with(memory: &mut Vec<Block>, password: &SecretString) -> Result<String, HashError> {
    let failed = |e: &dyn std::fmt::Display| HashError::Failed(e.to_string());
    let salt =
        SaltString::encode_b64(&crate::secrets::random_bytes::<16>()).map_err(|e| failed(&e))?;
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_buf)
        .map_err(|e| failed(&e))?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let blocks = blocks_for(memory, &params);
    let output = Output::init_with(output_len, |out| {
        argon
            .hash_password_into_with_memory(
                password.expose_secret().as_bytes(),
                salt_bytes,
                out,
                &mut *blocks,
            )
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|e| failed(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

fn verify_with(memory: &mut Vec<Block>, password: &SecretString, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
        None => Version::default(),
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    let blocks = blocks_for(memory, &params);
    let computed = Output::init_with(expected.len(), |out| {
        argon
            .hash_password_into_with_memory(
                password.expose_secret().as_bytes(),
                salt_bytes,
                out,
                &mut *blocks,
            )
            .map_err(|_| argon2::password_hash::Error::Crypto)
    });
    // `Output`'s equality is constant-time.
    computed.is_ok_and(|c| c == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{hash_password, verify_password};

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[tokio::test]
    async fn hashes_are_standard_phc_strings_both_ways() {
        let pool = HashPool::start(2, 8);
        let ours = pool.hash(&secret("Corr3ct-Horse")).await.unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        assert!(verify_password(&secret("Corr3ct-Horse"), &ours));
        let theirs = hash_password(&secret("Battery-Staple9")).unwrap();
        assert!(pool
            .verify(&secret("Battery-Staple9"), &theirs)
            .await
            .unwrap());
        assert!(!pool
            .verify(&secret("battery-staple9"), &theirs)
            .await
            .unwrap());
        assert!(!pool.verify(&secret("x"), "not a hash").await.unwrap());
        assert!(pool
            .verify_any(&secret("Corr3ct-Horse"), vec![theirs, ours])
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn checks_beyond_the_queue_are_refused_not_queued_without_bound() {
        let pool = HashPool::start(1, 1);
        let hash = hash_password(&secret("Corr3ct-Horse")).unwrap();
        let mut waiting = Vec::new();
        for _ in 0..6 {
            let pool = pool.clone();
            let hash = hash.clone();
            waiting.push(tokio::spawn(async move {
                pool.verify(&secret("Corr3ct-Horse"), &hash).await
            }));
        }
        let mut busy = 0;
        let mut matched = 0;
        for w in waiting {
            match w.await.unwrap() {
                Ok(true) => matched += 1,
                Err(HashError::Busy) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(matched >= 1, "the worker answers");
        assert!(
            busy >= 1,
            "one worker and a queue of one cannot take six at once"
        );
        assert_eq!(matched + busy, 6);
    }
}
