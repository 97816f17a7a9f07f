//! A fixture collection: the fixture photos (or others) in a temporary folder and the
//! index `qseek` makes of them with the tiny model, driven through the binary
//! (`end_to_end.rs`, `server.rs`, `server_security.rs`, `shard.rs`, `engine.rs`; a test
//! file adds its own commands in an `impl Collection` block of its own).

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use super::exif::{jpeg_with_exif, Exif};
use super::server::Server;
use super::{arg, copy_photos, fixtures, json, qseek, qseek_json, stderr, tiny};

/// A temporary folder holding `photos/` and, once something is indexed, `index/`.
pub struct Collection {
    pub tmp: tempfile::TempDir,
    pub photos: PathBuf,
    pub index: PathBuf,
}

impl Collection {
    /// An empty `photos/`, no index yet.
    pub fn empty() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let photos = tmp.path().join("photos");
        std::fs::create_dir(&photos).unwrap();
        let index = tmp.path().join("index");
        Collection { tmp, photos, index }
    }

    /// The fixture photos copied into `photos/`, not indexed yet.
    pub fn with_photos() -> Self {
        let c = Self::empty();
        copy_photos(&c.photos);
        c
    }

    /// The fixture photos with EXIF written into their three JPEGs (when, which camera,
    /// where; the PNGs have none), not indexed yet.
    pub fn with_metadata() -> Self {
        let c = Self::with_photos();
        for (name, exif) in [
            (
                "rocket.jpg",
                Exif {
                    date: Some("2023:06:14 10:00:00"),
                    offset: Some("+02:00"),
                    make: Some("Canon"),
                    model: Some("Canon EOS R5"),
                    gps: Some((48.8584, 2.2945)),
                },
            ),
            (
                "retina.jpg",
                Exif {
                    date: Some("2021:01:02 08:00:00"),
                    make: Some("NIKON CORPORATION"),
                    model: Some("NIKON D850"),
                    ..Exif::default()
                },
            ),
            (
                "hubble_deep_field.jpg",
                Exif {
                    date: Some("2023:12:31 23:59:59"),
                    make: Some("Apple"),
                    model: Some("iPhone 15"),
                    gps: Some((35.6762, 139.6503)),
                    ..Exif::default()
                },
            ),
        ] {
            let path = c.photos.join(name);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, jpeg_with_exif(&bytes, &exif)).unwrap();
        }
        c
    }

    /// The fixture photos, indexed with their vision features.
    pub fn indexed() -> Self {
        let c = Self::with_photos();
        c.index(&[&c.photos], &["--store-vision-features"]);
        c
    }

    /// A path in the temporary folder (beside `photos/` and `index/`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A photo's path (`name` in `photos/`), as a command-line argument.
    pub fn photo(&self, name: &str) -> String {
        arg(&self.photos.join(name))
    }

    /// Runs `qseek ARGS --index INDEX`.
    pub fn run(&self, args: &[&str]) -> Output {
        let index = arg(&self.index);
        qseek(&[args, &["--index", &index]].concat())
    }

    /// [`Collection::run`], which must succeed, and the JSON document it prints.
    pub fn run_json(&self, args: &[&str]) -> Value {
        let index = arg(&self.index);
        qseek_json(&[args, &["--index", &index]].concat(), 0)
    }

    /// `qseek index INPUTS... -m tiny`, into this collection's index; it must succeed.
    pub fn index(&self, inputs: &[&Path], extra: &[&str]) {
        let inputs: Vec<String> = inputs.iter().map(|p| arg(p)).collect();
        let tiny = tiny();
        let mut args = vec!["index"];
        args.extend(inputs.iter().map(String::as_str));
        args.extend(["-m", &tiny, "-q"]);
        args.extend(extra);
        let out = self.run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// `qseek index photos/ -m tiny --json`: its summary. Exit status 1 (some files
    /// failed) is accepted.
    pub fn index_json(&self, extra: &[&str]) -> Value {
        let (photos, tiny) = (arg(&self.photos), tiny());
        let mut args = vec!["index", &photos, "-m", &tiny, "--json", "-q"];
        args.extend(extra);
        let out = self.run(&args);
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "{}",
            stderr(&out)
        );
        json(&out)
    }

    /// The fixture captions added as texts (from a copy, `texts.txt` in the temporary
    /// folder); it must succeed.
    pub fn add_fixture_texts(&self) {
        let texts = self.path("texts.txt");
        std::fs::copy(fixtures().join("captions.txt"), &texts).unwrap();
        let out = self.run(&["texts", "add", &arg(&texts), "-q"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// `qseek serve` of this collection's index (with `-m tiny` while it has none) on a
    /// free local port.
    pub fn serve(&self, extra: &[&str]) -> Server {
        self.serve_with_env(extra, &[])
    }

    /// [`Collection::serve`] with these environment variables set.
    pub fn serve_with_env(&self, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let (index, tiny) = (arg(&self.index), tiny());
        let mut args = vec!["serve", "--index", &index, "--addr", "127.0.0.1:0", "-q"];
        if !self.index.exists() {
            args.extend(["-m", &tiny]);
        }
        args.extend(extra);
        Server::start_with_env(&args, envs)
    }
}
