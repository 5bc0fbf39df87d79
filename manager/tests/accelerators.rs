//! Accelerator pinning against a real GPU: a worker pinned to device `i` is shown exactly
//! that device by the CUDA driver, and a worker pinned to an id that does not exist is
//! shown none. Skipped (with a message) where the CUDA driver (`libcuda.so.1`) cannot be
//! loaded, which is every machine without an NVIDIA GPU.

mod common;

use bytes::Bytes;
use common::{config, task, value, Harness};
use scifaas_protocol::{FunctionId, FunctionSpec};

/// What the CUDA driver shows this worker: the device count and each device's PCI bus
/// id, or `None` without a driver.
const CUDA_DEVICES: &str = r#"
import ctypes, os, time

def cuda_devices(sleep=0):
    time.sleep(sleep)
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if cuda.cuInit(0) != 0:
        # CUDA_ERROR_NO_DEVICE, among others: nothing this worker may use.
        return {"count": 0, "buses": [], "pinned": os.environ.get("CUDA_VISIBLE_DEVICES")}
    count = ctypes.c_int()
    cuda.cuDeviceGetCount(ctypes.byref(count))
    buses = []
    for ordinal in range(count.value):
        device = ctypes.c_int()
        cuda.cuDeviceGet(ctypes.byref(device), ordinal)
        bus = ctypes.create_string_buffer(32)
        cuda.cuDeviceGetPCIBusId(bus, 32, device)
        buses.append(bus.value.decode())
    return {"count": count.value, "buses": buses, "pinned": os.environ.get("CUDA_VISIBLE_DEVICES")}
"#;

fn cuda_devices() -> FunctionSpec {
    FunctionSpec {
        id: FunctionId::new(),
        hash: format!("cuda-{}", FunctionId::new()),
        name: "cuda_devices".into(),
        source: Bytes::from_static(CUDA_DEVICES.as_bytes()),
        container: None,
    }
}

/// What the workers of a manager pinned to `ids` see, one answer per worker.
fn seen_by(ids: &[&str], unpinned: bool) -> Vec<serde_json::Value> {
    let mut config = config(ids.len().max(1) as u32);
    if !unpinned {
        config.accelerators = ids.iter().map(|s| s.to_string()).collect();
    }
    let mut harness = Harness::start(config);
    let f = cuda_devices();
    // One task per worker, sent together and long enough that each worker takes one.
    let tasks = (0..ids.len().max(1))
        .map(|_| task(&f, r#"{"args": [0.5]}"#))
        .collect();
    let answers = harness.run(tasks).iter().map(value).collect();
    harness.shutdown();
    answers
}

#[test]
fn a_pinned_worker_sees_exactly_its_gpu_and_an_unknown_id_hides_them_all() {
    let all = seen_by(&[], true).remove(0);
    if all.is_null() {
        eprintln!("skipping: no CUDA driver (libcuda.so.1) here; this test needs an NVIDIA GPU");
        return;
    }
    let buses: Vec<String> = serde_json::from_value(all["buses"].clone()).unwrap();
    println!("unpinned worker sees {} GPU(s): {buses:?}", buses.len());
    assert!(!buses.is_empty(), "a driver but no device: {all}");
    for (ordinal, bus) in buses.iter().enumerate() {
        let id = ordinal.to_string();
        let seen = seen_by(&[&id], false).remove(0);
        println!("worker pinned to {id} sees {seen}");
        assert_eq!(seen["pinned"], id.as_str());
        assert_eq!(seen["count"], 1, "pinned to {id}: {seen}");
        assert_eq!(seen["buses"][0], bus.as_str(), "pinned to {id}: {seen}");
    }
    let hidden = seen_by(&["scifaas-no-such-gpu"], false).remove(0);
    println!("worker pinned to a missing id sees {hidden}");
    assert_eq!(hidden["count"], 0, "{hidden}");
    if buses.len() >= 2 {
        let mut two = seen_by(&["0", "1"], false);
        two.sort_by_key(|v| v["pinned"].to_string());
        assert_eq!(two[0]["buses"], serde_json::json!([buses[0]]));
        assert_eq!(two[1]["buses"], serde_json::json!([buses[1]]));
    }
}
