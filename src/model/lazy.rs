//! A part of the model read from the checkpoint at its first use.

use std::sync::{Mutex, OnceLock};

use candle_core::Result;

/// The function that builds a [`Lazy`].
type Build<T> = Box<dyn Fn() -> Result<T> + Send + Sync>;

/// `T`, built by `build` at the first [`get`](Lazy::get); concurrent first calls build
/// it once. A failed build is not kept: the next call tries again. Once built, `build`
/// is dropped, and with it what it holds (a weight's tensors, once packed).
pub struct Lazy<T> {
    /// What it is, for `Debug`.
    what: &'static str,
    /// Locked while `built` is being built; `None` once it is.
    build: Mutex<Option<Build<T>>>,
    built: OnceLock<T>,
}

impl<T> Lazy<T> {
    pub fn new(what: &'static str, build: impl Fn() -> Result<T> + Send + Sync + 'static) -> Self {
        Self {
            what,
            build: Mutex::new(Some(Box::new(build))),
            built: OnceLock::new(),
        }
    }

    /// Whether it has been built.
    pub fn is_built(&self) -> bool {
        self.built.get().is_some()
    }

    /// The part, built now if it is not yet.
    pub fn get(&self) -> Result<&T> {
        if let Some(built) = self.built.get() {
            return Ok(built);
        }
        let mut build = self.build.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(built) = self.built.get() {
            return Ok(built);
        }
        let built = (build.as_ref().expect("the builder is kept until it built"))()?;
        let built = self.built.get_or_init(|| built);
        *build = None;
        Ok(built)
    }
}

impl<T> std::fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("what", &self.what)
            .field("built", &self.is_built())
            .finish_non_exhaustive()
    }
}
