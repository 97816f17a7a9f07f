//! Finding the photos of a collection: a recursive walk (walkdir) that sorts every
//! file into "an image qseek reads" or "skipped, and why".

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::preprocess::formats::is_image_extension;

/// Why a file is not passed to the model, for the formats people keep next to photos.
fn skip_reason(ext: &str) -> String {
    let kind = match ext {
        "heic" | "heif" | "avif" => "HEIC/HEIF/AVIF images are not supported (convert to JPEG)",
        "cr2" | "cr3" | "nef" | "arw" | "dng" | "orf" | "rw2" | "raf" | "srw" | "pef" => {
            "camera RAW files are not supported (export to JPEG)"
        }
        "mp4" | "mov" | "avi" | "mkv" | "webm" | "m4v" | "3gp" | "mts" | "wmv" => "video",
        "" => "no file extension",
        _ => "not an image format qseek reads",
    };
    if ext.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} (.{ext})")
    }
}

/// How to walk.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalkOptions {
    /// Enter hidden folders and take hidden files (names starting with `.`).
    pub hidden: bool,
    /// Stay inside each root: a symbolic link whose target lies outside it is skipped,
    /// not followed (the server's indexing runs, where the folder was not the person's
    /// choice). Without it links are followed wherever they lead, and their targets
    /// outside the root are reported in [`Walk::link_targets`].
    pub confine: bool,
}

/// An image file found by the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// Absolute path, through the root as given (symlinks inside are not resolved).
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Image files, sorted by path, each once.
    pub images: Vec<FoundFile>,
    /// Files that are not images qseek reads, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Entries that could not be read (permissions, symlink loops, vanished), with the reason.
    pub errors: Vec<(PathBuf, String)>,
    /// Where followed links lead out of their root (canonical paths, sorted, each once):
    /// the folders and files the collection also comes from.
    pub link_targets: Vec<PathBuf>,
}

/// Modification time of `meta` in whole seconds since the Unix epoch (0 if unknown).
pub fn mtime_secs(meta: &std::fs::Metadata) -> i64 {
    match meta.modified() {
        Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        },
        Err(_) => 0,
    }
}

/// The absolute form of `path` without resolving symlinks (`.` and `..` removed lexically
/// after joining to the current directory), so a collection keeps the names the user sees.
pub fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let joined = std::path::absolute(path)?;
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Whether `path` is `root` or lies inside it (whole components: `/a/bc` is not under `/a/b`).
pub fn is_under(path: &str, root: &str) -> bool {
    path == root
        || path
            .strip_prefix(root.trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/'))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with('.') && n != "." && n != "..")
}

/// Puts the file at `path` into `out`'s images, skipped files or errors.
fn sort_file(path: PathBuf, out: &mut Walk) {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !is_image_extension(&ext) {
        out.skipped.push((path, skip_reason(&ext)));
        return;
    }
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => out.images.push(FoundFile {
            size: meta.len(),
            mtime: mtime_secs(&meta),
            path,
        }),
        Ok(_) => out.errors.push((path, "not a file".into())),
        Err(e) => out.errors.push((path, e.to_string())),
    }
}

/// Sorts the files of a list (made absolute, in order, each once) as [`walk`] sorts
/// the files it finds; a path that is missing or not a file is an error.
pub fn classify(paths: Vec<PathBuf>) -> Walk {
    let mut out = Walk::default();
    for path in paths {
        match absolute(&path) {
            Ok(p) => sort_file(p, &mut out),
            Err(e) => out.errors.push((path, e.to_string())),
        }
    }
    out.images.sort_by(|a, b| a.path.cmp(&b.path));
    out.images.dedup_by(|a, b| a.path == b.path);
    out
}

/// Walks each root (a folder, or a single file) recursively, following symlinks (loops are
/// detected and reported, not followed; with [`WalkOptions::confine`], links out of the
/// root are skipped).
pub fn walk(roots: &[PathBuf], opts: WalkOptions) -> Walk {
    let mut out = Walk::default();
    for root in roots {
        let root = match absolute(root) {
            Ok(r) => r,
            Err(e) => {
                out.errors.push((root.clone(), e.to_string()));
                continue;
            }
        };
        // What "inside the root" means for links: its canonical path (the root itself
        // may be reached through links the person chose).
        let canonical_root = root.canonicalize().ok();
        let mut walker = WalkDir::new(&root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| opts.hidden || e.depth() == 0 || !is_hidden(e.file_name()));
        while let Some(entry) = walker.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().map_or_else(|| root.clone(), Path::to_path_buf);
                    let reason = if e.loop_ancestor().is_some() {
                        "symbolic link loop: not followed".to_string()
                    } else {
                        e.io_error()
                            .map_or_else(|| e.to_string(), |io| io.to_string())
                    };
                    out.errors.push((path, reason));
                    continue;
                }
            };
            if entry.depth() > 0 && entry.path_is_symlink() {
                let target = entry.path().canonicalize().ok();
                let inside = match (&target, &canonical_root) {
                    (Some(t), Some(r)) => t.starts_with(r),
                    _ => false,
                };
                if !inside && opts.confine {
                    out.skipped.push((
                        entry.path().to_path_buf(),
                        "a symbolic link out of the folder: not followed".to_string(),
                    ));
                    if entry.file_type().is_dir() {
                        walker.skip_current_dir();
                    }
                    continue;
                }
                if let (false, Some(t)) = (inside, target) {
                    out.link_targets.push(t);
                }
            }
            if !entry.file_type().is_file() {
                continue;
            }
            sort_file(entry.into_path(), &mut out);
        }
    }
    out.images.sort_by(|a, b| a.path.cmp(&b.path));
    out.images.dedup_by(|a, b| a.path == b.path);
    out.link_targets.sort();
    out.link_targets.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_sorted_into_images_and_skipped_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["a.JPG", "b.png", "c.heic", "d.mp4", "e", ".hidden.jpg"] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        std::fs::create_dir(d.join(".cache")).unwrap();
        std::fs::write(d.join(".cache/f.jpg"), b"x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/g.tiff"), b"x").unwrap();
        std::os::unix::fs::symlink(d, d.join("sub/loop")).unwrap();

        let w = walk(&[d.to_path_buf()], WalkOptions::default());
        let names: Vec<_> = w
            .images
            .iter()
            .map(|f| f.path.strip_prefix(d).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            [PathBuf::from("a.JPG"), "b.png".into(), "sub/g.tiff".into()]
        );
        let skipped: Vec<_> = w
            .skipped
            .iter()
            .map(|(p, r)| (p.file_name().unwrap().to_str().unwrap(), r.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                (
                    "c.heic",
                    "HEIC/HEIF/AVIF images are not supported (convert to JPEG) (.heic)"
                ),
                ("d.mp4", "video (.mp4)"),
                ("e", "no file extension"),
            ]
        );
        assert_eq!(w.errors.len(), 1, "{:?}", w.errors);
        assert!(w.errors[0].1.contains("loop"));

        let all = walk(
            &[d.to_path_buf()],
            WalkOptions {
                hidden: true,
                confine: false,
            },
        );
        assert_eq!(all.images.len(), 5);
    }

    #[test]
    fn is_under_matches_whole_components() {
        // (path, root, under?)
        let cases = [
            ("/a/b", "/a/b", true),
            ("/a/b/c.jpg", "/a/b", true),
            ("/a/b/c.jpg", "/a/b/", true),
            ("/a/bc.jpg", "/a/b", false),
            ("/a", "/a/b", false),
            ("/x/y.jpg", "/", true),
        ];
        for (path, root, expected) in cases {
            assert_eq!(is_under(path, root), expected, "{path} under {root}");
        }
    }
}
