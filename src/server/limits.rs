//! How many images the server decodes at once. A small file can declare a huge image,
//! and each decode holds its pixels: without a cap, concurrent requests add up until
//! the machine runs out of memory. Every decode (an upload, a thumbnail, an indexed
//! query image) takes one of `--max-decodes` permits; uploads are also admitted before
//! their body is read, at most twice the permits at once (decoding or waiting), so that
//! the bodies held are bounded too, and the rest get 503 with `Retry-After`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Error;

/// The permits, and the uploads admitted.
pub struct DecodeSlots {
    permits: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
}

/// An upload let in: counted until dropped.
pub struct Admission {
    admitted: Arc<AtomicUsize>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DecodeSlots {
    /// `permits` decodes at once (at least one).
    pub fn new(permits: usize) -> Self {
        let permits = permits.max(1);
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: 2 * permits,
        }
    }

    /// Lets an upload in, or says the server is busy.
    pub fn admit(&self) -> Result<Admission, Error> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = Admission {
            admitted: self.admitted.clone(),
        };
        if before >= self.max_admitted {
            return Err(Error::Busy {
                what: "decoding images",
            });
        }
        Ok(admission)
    }

    /// Waits for a permit to decode.
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_past_twice_the_permits_are_refused_until_one_ends() {
        let slots = DecodeSlots::new(2);
        let held: Vec<_> = (0..4).map(|_| slots.admit().unwrap()).collect();
        let refused = slots.admit().err().unwrap();
        assert_eq!(refused.kind(), crate::error::ErrorKind::Busy);
        drop(held);
        assert!(slots.admit().is_ok());
    }
}
