//! Embeds the eBPF object built by `cargo xtask build` (nightly + bpf-linker), if any.
//!
//! Without it the daemon still builds (plain `cargo build`) and runs netlink-only; the
//! `has_ebpf_obj` cfg tells `src/ebpf` which one it is.
//!
//! Also compiles the vendored gNMI protocol (`third_party/gnmi`) into the server-side
//! Rust types and service trait, with protox: pure Rust, no `protoc` on the build machine.
use std::path::PathBuf;

fn main() {
    gnmi();
    println!("cargo::rustc-check-cfg=cfg(has_ebpf_obj)");
    println!("cargo::rerun-if-env-changed=ROUTE_MIRROR_EBPF_OBJ");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest.join("..").join("route-mirror-ebpf");
    let obj = std::env::var_os("ROUTE_MIRROR_EBPF_OBJ")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| ebpf_dir.join("target/bpfel-unknown-none/release/route-mirror"));
    // A directory is scanned recursively: a rebuilt object re-runs this script.
    if ebpf_dir.is_dir() {
        println!(
            "cargo::rerun-if-changed={}",
            ebpf_dir.join("target").display()
        );
        println!("cargo::rerun-if-changed={}", ebpf_dir.join("src").display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"))
        .join("route-mirror.bpf.o");
    if obj.is_file() {
        std::fs::copy(&obj, &out).expect("copying the eBPF object into OUT_DIR");
        println!("cargo::rustc-cfg=has_ebpf_obj");
    } else {
        let _ = std::fs::remove_file(&out);
    }
}

fn gnmi() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../third_party/gnmi");
    println!("cargo::rerun-if-changed={}", root.display());
    let fds = protox::compile(
        ["github.com/openconfig/gnmi/proto/gnmi/gnmi.proto"],
        [&root],
    )
    .expect("compiling third_party/gnmi");
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_fds(fds)
        .expect("generating the gNMI service code");
}
