//! How the sled backend packs a stored value: JSON, compressed with zstd when it is large enough
//! to gain from it (events, runs, step records).
//!
//! A packed value is a tag byte, then one zstd frame compressed against a fixed dictionary: the
//! tag names the dictionary ([`SKELETONS_V1`], the only one so far). The dictionary is made of the
//! JSON skeletons of hookflow's own records (field names, statuses, common webhook headers), so
//! a 400-byte step record shrinks to a third instead of two thirds. A dictionary, once a store
//! holds values packed with it, never changes: a new one gets a new tag. JSON never starts with
//! a tag byte, so values written before packing existed are read as they are. The dictionary is
//! prepared once per process, and each thread reuses one zstd context per direction: preparing
//! either costs more than packing an event.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::LazyLock;

use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

/// Values shorter than this stay plain JSON: zstd saves too little on them to pay its CPU.
const MIN_PACKED: usize = 128;
/// zstd's fast level -3: half the CPU of level 1 on a 2 KB webhook event against the dictionary, for
/// about a quarter more bytes (the level is not part of the format: any level unpacks the same).
const LEVEL: i32 = -3;
/// The tag of a value packed with [`SKELETONS_V1`].
const TAG_V1: u8 = 1;
/// The largest value a frame may unpack to: well above the largest event body accepted (1 MiB)
/// with its headers, so a damaged frame cannot make the reader allocate without bound.
const MAX_UNPACKED: u64 = 64 << 20;

/// The dictionary of [`TAG_V1`]: skeletons of hookflow's records, never to be edited (stores hold
/// values that only unpack with these exact bytes; `the_v1_dictionary_never_changes` checks).
const SKELETONS_V1: &str = concat!(
    r#""headers":{"accept":"*/*","accept-encoding":"gzip, deflate","user-agent":"","x-forwarded-for":"","#,
    r#""x-request-id":"","stripe-signature":"t=","x-hubspot-signature-v3":"","x-hubspot-request-timestamp":"","#,
    r#""x-github-event":"","x-github-delivery":"","x-hub-signature-256":"sha256=","x-shopify-topic":"","#,
    r#""x-shopify-hmac-sha256":"","x-twilio-signature":"","authorization":"[redacted]","#,
    r#""content-type":"application/json; charset=utf-8","host":"","content-length":""},"#,
    r#"{"id":"evt_","flow_id":"","received_at":"2026-01-01T00:00:00.000Z","trigger":{"method":"POST","#,
    r#""headers":{"content-type":"application/json","accept":"*/*","host":"127.0.0.1:","content-length":""},"#,
    r#""query":{},"body":{"id":"","type":"","data":{}},"received_at":"2026-01-01T00:00:00.000Z"}}"#,
    r#"{"id":"run_","flow_id":"","revision":"","event_id":"evt_","status":"running","#,
    r#""created_at":"2026-01-01T00:00:00.000Z","updated_at":"2026-01-01T00:00:00.000Z","finished_at":null,"#,
    r#""steps":[{"id":"","status":"pending"},{"id":"","status":"skipped"},{"id":"","status":"failed"},"#,
    r#"{"id":"","status":"filtered"},{"id":"","status":"queued","item":"itm_"},{"id":"","status":"succeeded"}],"#,
    r#""reason":null,"replay_of":"run_","failure":""}"#,
    r#"{"run_id":"run_","step_id":"","kind":"http","status":"failed","input":{"method":"POST","url":"https://","#,
    r#""headers":{},"query":{},"json":{}},"output":null,"error":{"message":"","detail":{"status":500,"body":""},"#,
    r#""retryable":true},"attempts":[{"number":1,"started_at":"2026-01-01T00:00:00.000Z","duration_ms":0,"#,
    r#""error":"","retry_at":"2026-01-01T00:00:00.000Z"}]}"#,
    r#"{"run_id":"run_","step_id":"","kind":"filter","status":"filtered","input":{"passed":false,"reason":""},"#,
    r#""output":{"passed":false,"reason":""},"error":null,"attempts":[{"number":1,"#,
    r#""started_at":"2026-01-01T00:00:00.000Z","duration_ms":0,"error":null,"retry_at":null}]}"#,
    r#"{"run_id":"run_","step_id":"","kind":"http","status":"succeeded","input":{"method":"POST","url":"https://","#,
    r#""headers":{},"query":{},"json":{}},"output":{"status":200,"headers":{"server":"","#,
    r#""date":"Mon, 01 Jan 2026 00:00:00 GMT","content-type":"application/json","content-length":""},"body":{}},"#,
    r#""error":null,"attempts":[{"number":1,"started_at":"2026-01-01T00:00:00.000Z","duration_ms":0,"#,
    r#""error":null,"retry_at":null}]}"#,
    r#"{"run_id":"run_","step_id":"","kind":"map","status":"succeeded","input":{},"output":{},"error":null,"#,
    r#""attempts":[{"number":1,"started_at":"2026-01-01T00:00:00.000Z","duration_ms":0,"error":null,"#,
    r#""retry_at":null}]}"#,
    r#"{"run_id":"run_","step_id":"","kind":"filter","status":"succeeded","input":{"passed":true,"reason":null},"#,
    r#""output":{"passed":true,"reason":null},"error":null,"attempts":[{"number":1,"#,
    r#""started_at":"2026-01-01T00:00:00.000Z","duration_ms":0,"error":null,"retry_at":null}]}"#,
);

static PACKING_V1: LazyLock<CDict<'static>> =
    LazyLock::new(|| zstd_safe::create_cdict(SKELETONS_V1.as_bytes(), LEVEL));
static UNPACKING_V1: LazyLock<DDict<'static>> =
    LazyLock::new(|| zstd_safe::create_ddict(SKELETONS_V1.as_bytes()));

thread_local! {
    static PACKER: RefCell<CCtx<'static>> = RefCell::new(zstd_safe::create_cctx());
    static UNPACKER: RefCell<DCtx<'static>> = RefCell::new(zstd_safe::create_dctx());
}

/// Packs a JSON value for storage: compressed when that makes it smaller.
pub(super) fn pack(json: Vec<u8>) -> Vec<u8> {
    if json.len() < MIN_PACKED {
        return json;
    }
    let mut packed = vec![0; 1 + zstd_safe::compress_bound(json.len())];
    packed[0] = TAG_V1;
    let written = PACKER.with(|c| {
        c.borrow_mut()
            .compress_using_cdict(&mut packed[1..], &json, &PACKING_V1)
    });
    match written {
        Ok(n) if 1 + n < json.len() => {
            packed.truncate(1 + n);
            packed
        }
        _ => json,
    }
}

/// The JSON of a stored value: unpacked when it is packed, as it is otherwise.
pub(super) fn unpack(stored: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    let Some((&TAG_V1, frame)) = stored.split_first() else {
        return Ok(Cow::Borrowed(stored));
    };
    let size = zstd::zstd_safe::get_frame_content_size(frame);
    if size > MAX_UNPACKED {
        return Err(format!(
            "a compressed value of unknown or too large size ({size})"
        ));
    }
    let mut json = Vec::with_capacity(size as usize);
    UNPACKER
        .with(|d| {
            d.borrow_mut()
                .decompress_using_ddict(&mut json, frame, &UNPACKING_V1)
        })
        .map_err(|code| format!("cannot decompress: {}", zstd_safe::get_error_name(code)))?;
    Ok(Cow::Owned(json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_are_packed_and_small_ones_kept_as_json() {
        let large = serde_json::to_vec(&serde_json::json!({
            "type": "customer.subscription.updated",
            "items": vec![serde_json::json!({"price": "price_pro_monthly", "quantity": 3}); 20],
        }))
        .unwrap();
        let packed = pack(large.clone());
        assert!(packed[0] == TAG_V1 && packed.len() < large.len() / 2);
        assert_eq!(unpack(&packed).unwrap().as_ref(), large.as_slice());

        let small = br#"{"id":"itm_1","attempt":1}"#.to_vec();
        assert_eq!(pack(small.clone()), small);
        assert_eq!(unpack(&small).unwrap().as_ref(), small.as_slice());
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_panic() {
        let mut packed = pack(vec![b'a'; 4096]);
        packed.truncate(packed.len() - 2);
        assert!(unpack(&packed).is_err());
        assert!(unpack(&[TAG_V1]).is_err());
        assert!(unpack(&[TAG_V1, 0x28, 0xb5, 0x2f, 0xfd, 0]).is_err());
    }

    #[test]
    fn the_v1_dictionary_never_changes() {
        // Values packed with tag 1 unpack only with these exact bytes.
        assert_eq!(SKELETONS_V1.len(), 2681);
        assert_eq!(crc32fast::hash(SKELETONS_V1.as_bytes()), 133_316_178);
    }
}
