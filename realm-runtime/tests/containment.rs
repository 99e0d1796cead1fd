//! Small WAT guests: Memory64, traps, limits and ABI misuse end the guest's
//! call with an error; the runtime, the model and other tenants go on.

mod common;

use std::time::Duration;

use realm_runtime::{Error, Runtime, RuntimeConfig, Tenant, TenantConfig};

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_memory: 64 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn tenant(rt: &Runtime, wat: &str, config: TenantConfig) -> Tenant {
    rt.tenant(&wat::parse_str(wat).unwrap(), config).unwrap()
}

fn limits(models: Vec<realm_runtime::ModelId>) -> TenantConfig {
    TenantConfig {
        models,
        memory_limit: 4 << 20,
        time_limit: Duration::from_millis(300),
        session_tokens: 64,
        loras: Vec::new(),
    }
}

/// Every way a guest can go wrong without the model.
const FAULTY: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "ok"))
  (func (export "unreachable") unreachable)
  (func (export "oob") (drop (i32.load (i32.const 0x7fff0000))))
  (func $recurse (export "recurse") (call $recurse))
  (func (export "spin") (loop $l (br $l)))
  (func (export "grow")
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))))
"#;

#[test]
fn traps_and_limits_fail_only_the_call() {
    let rt = runtime();
    let mut bad = tenant(&rt, FAULTY, limits(vec![]));
    let mut good = tenant(&rt, FAULTY, limits(vec![]));
    let guest = |e: Error, what: &str| match e {
        Error::Guest(msg) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected a guest error about {what}, got {other:?}"),
    };
    guest(bad.call("unreachable").unwrap_err(), "unreachable");
    guest(bad.call("oob").unwrap_err(), "out of bounds");
    guest(bad.call("recurse").unwrap_err(), "call stack exhausted");
    assert!(matches!(bad.call("spin"), Err(Error::TimeLimit(_))));
    assert!(matches!(bad.call("grow"), Err(Error::MemoryLimit(_))));
    guest(bad.call("missing").unwrap_err(), "missing");
    // Time limits hold for tenants that outlive their runtime.
    drop(rt);
    assert!(matches!(bad.call("spin"), Err(Error::TimeLimit(_))));
    // The failing tenant starts afresh, and the other never noticed.
    bad.call("ok").unwrap();
    good.call("ok").unwrap();
}

#[test]
fn memory64_guests_run_and_their_pointers_are_checked() {
    let rt = runtime();
    let wat = r#"
    (module
      (import "realm" "emit" (func $emit (param i64 i64) (result i32)))
      (memory (export "memory") i64 1)
      (data (i64.const 16) "hello")
      (func (export "run")
        (i64.store (i64.const 0x100) (i64.const 0x1122334455667788))
        (if (i64.ne (i64.load (i64.const 0x100)) (i64.const 0x1122334455667788)) (then unreachable))
        (if (i64.ne (memory.grow (i64.const 1)) (i64.const 1)) (then unreachable))
        (if (i64.ne (memory.size) (i64.const 2)) (then unreachable))
        (drop (call $emit (i64.const 16) (i64.const 5))))
      (func (export "far") (drop (call $emit (i64.const 0x100000000) (i64.const 5))))
      (func (export "wrap") (drop (call $emit (i64.const -2) (i64.const 5))))
      (func (export "oob") (drop (i64.load (i64.const 0x100000000)))))
    "#;
    let mut t = tenant(&rt, wat, limits(vec![]));
    t.call("run").unwrap();
    for f in ["far", "wrap"] {
        match t.call(f) {
            Err(Error::Guest(msg)) => assert!(msg.contains("text"), "{msg}"),
            other => panic!("{f}: {other:?}"),
        }
    }
    assert!(matches!(t.call("oob"), Err(Error::Guest(_))));
    t.call("run").unwrap();
}

/// A guest that misuses the model's host functions, one export per mistake.
const MISUSE: &str = r#"
(module
  (import "realm" "session_create" (func $create (param i32 i64 i64) (result i64)))
  (import "realm" "session_drop" (func $drop (param i64)))
  (import "realm" "session_shift" (func $shift (param i64 i64 i64)))
  (import "realm" "forward" (func $forward (param i64 i64 i64 i64 i64) (result i32)))
  (import "realm" "embed_tokens" (func $embed (param i64 i64 i64) (result i32)))
  (import "realm" "forward_layer" (func $layer (param i64 i32)))
  (import "realm" "model_metadata" (func $meta (param i32 i64 i64) (result i64)))
  (memory (export "memory") 4)
  (global $h (mut i64) (i64.const 0))
  (global $prev (mut i64) (i64.const 0))
  ;; token 1 at address 0; logits from 1024 (4 pages hold 65536 floats)
  (data (i32.const 0) "\01\00\00\00")
  (func (export "create") (global.set $h (call $create (i32.const 0) (i64.const 8) (i64.const 4))))
  (func (export "step") (drop (call $forward (global.get $h) (i64.const 0) (i64.const 1) (i64.const 1024) (i64.const 60000))))
  (func (export "fill") (loop $l (br_if $l (i32.eqz (call $forward (global.get $h) (i64.const 0) (i64.const 1) (i64.const 1024) (i64.const 60000)))))
    (if (i32.ne (call $forward (global.get $h) (i64.const 0) (i64.const 1) (i64.const 1024) (i64.const 60000)) (i32.const 1)) (then unreachable)))
  (func (export "bad_tokens") (drop (call $forward (global.get $h) (i64.const 0xfffffff0) (i64.const 8) (i64.const 1024) (i64.const 60000))))
  (func (export "huge_count") (drop (call $forward (global.get $h) (i64.const 0) (i64.const 0x4000000000000000) (i64.const 1024) (i64.const 60000))))
  (func (export "small_logits") (drop (call $forward (global.get $h) (i64.const 0) (i64.const 1) (i64.const 1024) (i64.const 10))))
  (func (export "logits_past_end") (drop (call $forward (global.get $h) (i64.const 0) (i64.const 1) (i64.const 200000) (i64.const 60000))))
  (func (export "huge_session") (drop (call $create (i32.const 0) (i64.const 0x7fffffffffffffff) (i64.const 4))))
  (func (export "many_sessions") (loop $l (drop (call $create (i32.const 0) (i64.const 8) (i64.const 4))) (br $l)))
  (func (export "churn") (local $i i32)
    (loop $l
      (call $drop (call $create (i32.const 0) (i64.const 32) (i64.const 4)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 100)))))
  (func (export "bad_shift") (call $shift (global.get $h) (i64.const 0) (i64.const 100)))
  (func (export "huge_shift") (call $shift (global.get $h) (i64.const -1) (i64.const 1)))
  (func (export "bad_model") (drop (call $create (i32.const 3) (i64.const 8) (i64.const 4))))
  (func (export "bad_meta") (drop (call $meta (i32.const 0) (i64.const 0x10000) (i64.const 0xffffffffffff))))
  (func (export "layer_out_of_order")
    (drop (call $embed (global.get $h) (i64.const 0) (i64.const 1)))
    (call $layer (global.get $h) (i32.const 5)))
  (func (export "drop_it") (call $drop (global.get $h)) (global.set $prev (global.get $h)))
  (func (export "use_dropped") (drop (call $forward (global.get $prev) (i64.const 0) (i64.const 1) (i64.const 1024) (i64.const 60000))))
  (func (export "forge") (drop (call $forward (i64.sub (global.get $h) (i64.const 1)) (i64.const 0) (i64.const 1) (i64.const 1024) (i64.const 60000))))
  (func (export "create_then_trap") (global.set $h (call $create (i32.const 0) (i64.const 8) (i64.const 4))) unreachable))
"#;

#[test]
fn host_function_misuse_is_an_error_and_contained() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let rt = runtime();
    let id = rt.load_model(&path).unwrap();
    let config = TenantConfig {
        time_limit: Duration::from_secs(30),
        ..limits(vec![id.clone()])
    };
    let mut other = tenant(&rt, MISUSE, config.clone());
    other.call("create").unwrap();
    let mut t = tenant(&rt, MISUSE, config);
    t.call("create").unwrap();
    t.call("step").unwrap();
    assert_eq!(t.live_sessions(), 1);
    // Dropped sessions give their tokens back to the budget.
    t.call("churn").unwrap();
    assert_eq!(t.live_sessions(), 1);
    let expect = |t: &mut Tenant, f: &str, what: &str| match t.call(f) {
        Err(Error::Guest(msg)) => assert!(msg.contains(what), "{f}: {msg}"),
        other => panic!("{f}: expected an error about {what}, got {other:?}"),
    };
    // Each failure drops the instance and its sessions: recreate between.
    let cases = [
        ("bad_tokens", "outside guest memory"),
        ("huge_count", "overflows"),
        ("small_logits", "do not fit"),
        ("logits_past_end", "outside guest memory"),
        ("bad_model", "not granted"),
        ("huge_session", "budget"),
        ("many_sessions", "budget"),
        ("bad_meta", "outside guest memory"),
        ("bad_shift", "cannot forget 100 tokens"),
        ("huge_shift", "cannot forget 1 tokens"),
        ("layer_out_of_order", "out of order"),
        ("forge", "not a live session of this tenant"),
    ];
    for (f, what) in cases {
        if f == "forge" {
            // The handle just below ours is then the other tenant's.
            other.call("create").unwrap();
        }
        t.call("create").unwrap();
        expect(&mut t, f, what);
        assert_eq!(t.live_sessions(), 0, "{f}: sessions are freed");
    }
    t.call("create").unwrap();
    t.call("drop_it").unwrap();
    expect(&mut t, "use_dropped", "not a live session");
    expect(&mut t, "create_then_trap", "unreachable");
    assert_eq!(t.live_sessions(), 0);
    // A full context is a status the guest handles, not an error.
    t.call("create").unwrap();
    t.call("fill").unwrap();
    // The other tenant's session is untouched.
    other.call("step").unwrap();
    assert_eq!(other.live_sessions(), 2);
    // A real guest on the same model still generates.
    let config = TenantConfig {
        memory_limit: 64 << 20,
        ..TenantConfig::new(vec![id.clone()])
    };
    let mut guest = rt.tenant(&common::guest_wasm(), config).unwrap();
    let req = realm_runtime::GenerateRequest {
        max_tokens: 4,
        sampling: realm_models::SamplingParams::greedy(),
        ..Default::default()
    };
    let stats = guest
        .generate("The capital of France is", &req, |_| {})
        .unwrap();
    assert_eq!(stats.generated_tokens, 4);
    drop((t, other, guest));
    assert_eq!(rt.models().holders(&id), Some(0));
}
