//! Where the container tests find their images and runtimes, shared by the worker's and
//! the manager's tests (`#[path]`-included).
//!
//! The images are built by `scripts/build-test-image.sh` (root, the Debian mirror) into
//! `$SCIFAAS_TEST_IMAGES`, default `target/test-images` in the repository. When they or
//! `bwrap` / `ch-run` are missing, a test skips with a message saying how to enable it,
//! or fails when `SCIFAAS_REQUIRE_CONTAINERS=1`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The test images' folder, when it and both real runtimes are ready; otherwise `None`
/// after saying why (or a panic, when containers are required).
pub fn test_images(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SCIFAAS_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/test-images")
                .canonicalize()
                .unwrap_or_else(|_| {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-images")
                })
        });
    let mut missing = Vec::new();
    for image in ["a", "b", "nopython", "oldpython"] {
        if !dir.join(image).join(".scifaas-image-done").is_file()
            && !dir.join(image).join("scifaas-test-image").is_file()
        {
            missing.push(format!("image {}", dir.join(image).display()));
        }
    }
    for exe in ["bwrap", "ch-run"] {
        if !on_path(exe) {
            missing.push(format!("`{exe}` on PATH"));
        }
    }
    if missing.is_empty() {
        return Some(dir);
    }
    let why = format!(
        "{test}: container test not run: missing {}. Run scripts/build-test-image.sh (as \
         root; it installs bubblewrap and charliecloud and debootstraps the images), or \
         point SCIFAAS_TEST_IMAGES at a folder it built",
        missing.join(", ")
    );
    if std::env::var("SCIFAAS_REQUIRE_CONTAINERS").as_deref() == Ok("1") {
        panic!("{why} (SCIFAAS_REQUIRE_CONTAINERS=1 makes this a failure)");
    }
    eprintln!("skipping {why}; set SCIFAAS_REQUIRE_CONTAINERS=1 to make this a failure");
    None
}

/// Whether `exe` is an executable file on PATH.
pub fn on_path(exe: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(exe).is_file())
}

/// The image `name` in `images`, as a string for a [`scifaas_protocol::ContainerSpec`].
pub fn image(images: &Path, name: &str) -> String {
    images.join(name).to_string_lossy().into_owned()
}
