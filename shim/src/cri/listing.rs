//! ListContainers and ListPodSandbox answered from cached encodings.
//!
//! kubelet lists every container and every pod once a second. At 10,000 of them, converting
//! each object to its CRI message (its labels and annotations cloned into hash maps), encoding
//! it and freeing it again is most of a List call's time. Everything in a listed message but
//! its state is fixed when the object is created, so [`ListCache`] keeps each object's message
//! encoded without its state field, and an answer is those bytes with the current state
//! appended to each: protobuf lets a message's fields come in any order, and a repeated
//! message field is on the wire the same as repeated bytes. [`super::routes::Routes`] sends
//! such answers through tonic with [`ListingCodec`].

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};

use bytes::{BufMut, Bytes};
use k8s_cri::v1 as cri;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use wasmpod_runtime::container::Container;
use wasmpod_runtime::pod::Pod;

use super::convert;

/// `containers` of ListContainersResponse and `items` of ListPodSandboxResponse.
const ITEMS_FIELD: u32 = 1;
/// `state` of Container.
const CONTAINER_STATE_FIELD: u32 = 6;
/// `state` of PodSandbox.
const POD_STATE_FIELD: u32 = 3;

/// A List answer: each object's cached message without its state, and its state now.
pub struct Listing {
    state_field: u32,
    items: Vec<(Bytes, i32)>,
}

impl Listing {
    /// The size of one item's message: its cached fields, then its state unless the state is
    /// 0, which proto3 leaves out as prost does.
    fn item_len(&self, fixed: &Bytes, state: i32) -> usize {
        match state {
            0 => fixed.len(),
            _ => fixed.len() + prost::encoding::int32::encoded_len(self.state_field, &state),
        }
    }

    pub fn encoded_len(&self) -> usize {
        self.items
            .iter()
            .map(|(fixed, state)| {
                let len = self.item_len(fixed, *state);
                key_len(ITEMS_FIELD) + encoded_len_varint(len as u64) + len
            })
            .sum()
    }

    /// Writes the answer as its response message: the same bytes prost would write for it,
    /// but with each object's state last.
    pub fn encode(&self, buf: &mut impl BufMut) {
        for (fixed, state) in &self.items {
            encode_key(ITEMS_FIELD, WireType::LengthDelimited, buf);
            encode_varint(self.item_len(fixed, *state) as u64, buf);
            buf.put_slice(fixed);
            if *state != 0 {
                prost::encoding::int32::encode(self.state_field, state, buf);
            }
        }
    }

    /// The answer as a response message, for the generated server's methods.
    pub fn decode<M: Message + Default>(&self) -> Result<M, Status> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        M::decode(buf.as_slice()).map_err(|e| Status::internal(format!("listing: {e}")))
    }
}

/// The encoded stateless messages of listed containers and pods. The one owner of these
/// bytes: entries are keyed by object id and checked against the object itself (an entry
/// holds a weak pointer, so no other object can take its address while it lives), and entries
/// of objects the runtime has dropped are evicted in one place, [`Cache::listing`].
#[derive(Default)]
pub struct ListCache {
    containers: Cache<Container>,
    pods: Cache<Pod>,
}

impl ListCache {
    /// `containers` with their states, as ListContainers answers them; `live` is how many
    /// containers the runtime holds now.
    pub fn containers(&self, containers: &[(Arc<Container>, i32)], live: usize) -> Listing {
        self.containers.listing(
            containers,
            live,
            CONTAINER_STATE_FIELD,
            |c| &c.id,
            |c| {
                cri::Container {
                    state: 0,
                    ..convert::container(c)
                }
                .encode_to_vec()
            },
        )
    }

    /// `pods` with their states, as ListPodSandbox answers them; `live` is how many pods the
    /// runtime holds now.
    pub fn pods(&self, pods: &[(Arc<Pod>, i32)], live: usize) -> Listing {
        self.pods.listing(
            pods,
            live,
            POD_STATE_FIELD,
            |p| &p.id,
            |p| {
                cri::PodSandbox {
                    state: 0,
                    ..convert::pod_sandbox(p)
                }
                .encode_to_vec()
            },
        )
    }
}

struct Cache<T> {
    entries: Mutex<HashMap<String, Entry<T>>>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
        }
    }
}

struct Entry<T> {
    object: Weak<T>,
    fixed: Bytes,
}

impl<T> Cache<T> {
    /// The listing of `objects`, encoding (with `encode`) those not seen before. When the
    /// cache holds more entries than the runtime has objects (`live`), some of its objects are
    /// gone: their entries are dropped here, and only here.
    fn listing(
        &self,
        objects: &[(Arc<T>, i32)],
        live: usize,
        state_field: u32,
        id: impl Fn(&T) -> &String,
        encode: impl Fn(&T) -> Vec<u8>,
    ) -> Listing {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let items = objects
            .iter()
            .map(|(object, state)| {
                let fixed = match entries.get(id(object)) {
                    Some(e) if std::ptr::eq(e.object.as_ptr(), Arc::as_ptr(object)) => {
                        e.fixed.clone()
                    }
                    _ => {
                        let fixed = Bytes::from(encode(object));
                        let entry = Entry {
                            object: Arc::downgrade(object),
                            fixed: fixed.clone(),
                        };
                        entries.insert(id(object).clone(), entry);
                        fixed
                    }
                };
                (fixed, *state)
            })
            .collect();
        if entries.len() > live {
            entries.retain(|_, e| e.object.strong_count() > 0);
        }
        Listing { state_field, items }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

/// Encodes a [`Listing`] and decodes requests with prost.
pub struct ListingCodec<Req>(PhantomData<Req>);

impl<Req> Default for ListingCodec<Req> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req: Message + Default + Send + 'static> Codec for ListingCodec<Req> {
    type Encode = Listing;
    type Decode = Req;
    type Encoder = ListingEncoder;
    type Decoder = tonic_prost::ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        ListingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

pub struct ListingEncoder;

impl Encoder for ListingEncoder {
    type Item = Listing;
    type Error = Status;

    fn encode(&mut self, item: Listing, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // One allocation for the whole answer instead of doubling through 8 KiB steps.
        buf.reserve(item.encoded_len());
        item.encode(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::HashMap;

    use super::*;

    fn container(id: &str) -> cri::Container {
        cri::Container {
            id: id.into(),
            pod_sandbox_id: "pod".into(),
            metadata: Some(cri::ContainerMetadata {
                name: "web".into(),
                attempt: 2,
            }),
            image: Some(cri::ImageSpec {
                image: "file:///web.wasm".into(),
                ..Default::default()
            }),
            image_ref: "sha256:0123".into(),
            state: 0,
            created_at: 1_764_661_205_123_456_789,
            labels: HashMap::from([("io.kubernetes.container.name".into(), "web".into())]),
            annotations: HashMap::from([("io.kubernetes.container.hash".into(), "8d4e".into())]),
            image_id: "sha256:0123".into(),
        }
    }

    #[test]
    fn a_container_listing_is_the_messages_with_their_states() {
        use cri::ContainerState::*;
        let states = [
            ContainerCreated,
            ContainerRunning,
            ContainerExited,
            ContainerUnknown,
        ];
        let listing = Listing {
            state_field: CONTAINER_STATE_FIELD,
            items: states
                .iter()
                .enumerate()
                .map(|(i, s)| (container(&i.to_string()).encode_to_vec().into(), *s as i32))
                .collect(),
        };
        let expected = cri::ListContainersResponse {
            containers: states
                .iter()
                .enumerate()
                .map(|(i, s)| cri::Container {
                    state: *s as i32,
                    ..container(&i.to_string())
                })
                .collect(),
        };
        assert_eq!(
            listing.decode::<cri::ListContainersResponse>().unwrap(),
            expected
        );
        assert_eq!(listing.encoded_len(), expected.encoded_len());
    }

    #[test]
    fn a_pod_listing_is_the_messages_with_their_states() {
        let pod = |id: &str, state: i32| cri::PodSandbox {
            id: id.into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "web-0".into(),
                uid: "6a1b".into(),
                namespace: "default".into(),
                attempt: 1,
            }),
            state,
            created_at: 1_764_661_205_123_456_789,
            labels: HashMap::from([("app".into(), "web".into())]),
            annotations: HashMap::from([("kubernetes.io/config.source".into(), "api".into())]),
            runtime_handler: String::new(),
        };
        let states = [
            cri::PodSandboxState::SandboxReady as i32,
            cri::PodSandboxState::SandboxNotready as i32,
        ];
        let listing = Listing {
            state_field: POD_STATE_FIELD,
            items: states
                .iter()
                .map(|s| (pod(&s.to_string(), 0).encode_to_vec().into(), *s))
                .collect(),
        };
        let expected = cri::ListPodSandboxResponse {
            items: states.iter().map(|s| pod(&s.to_string(), *s)).collect(),
        };
        assert_eq!(
            listing.decode::<cri::ListPodSandboxResponse>().unwrap(),
            expected
        );
        assert_eq!(listing.encoded_len(), expected.encoded_len());
    }

    struct Object {
        id: String,
        version: u32,
    }

    /// Lists `objects` (all running) through `cache`, counting encodings in `encodes`.
    fn list(
        cache: &Cache<Object>,
        objects: &[Arc<Object>],
        live: usize,
        encodes: &Cell<usize>,
    ) -> Vec<cri::Container> {
        let running = cri::ContainerState::ContainerRunning as i32;
        let objects: Vec<_> = objects.iter().map(|o| (o.clone(), running)).collect();
        let listing = cache.listing(
            &objects,
            live,
            CONTAINER_STATE_FIELD,
            |o| &o.id,
            |o| {
                encodes.set(encodes.get() + 1);
                cri::Container {
                    id: o.id.clone(),
                    image_ref: o.version.to_string(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        );
        listing
            .decode::<cri::ListContainersResponse>()
            .unwrap()
            .containers
    }

    #[test]
    fn objects_are_encoded_once_and_their_entries_go_with_them() {
        let cache = Cache::default();
        let encodes = Cell::new(0);
        let object = |id: &str, version| {
            Arc::new(Object {
                id: id.into(),
                version,
            })
        };
        let (a, b) = (object("a", 1), object("b", 1));
        let listed = list(&cache, &[a.clone(), b.clone()], 2, &encodes);
        assert_eq!(encodes.get(), 2);
        assert_eq!(listed.len(), 2);
        list(&cache, &[a.clone(), b.clone()], 2, &encodes);
        list(&cache, std::slice::from_ref(&b), 2, &encodes);
        assert_eq!(encodes.get(), 2, "kept encodings are reused");

        // Another object under a known id is encoded as itself, not served the old bytes.
        let a2 = object("a", 2);
        let listed = list(&cache, &[a2.clone(), b.clone()], 2, &encodes);
        assert_eq!(encodes.get(), 3);
        assert_eq!(listed[0].image_ref, "2");
        assert_eq!(
            listed[0].state,
            cri::ContainerState::ContainerRunning as i32
        );

        // b removed from the runtime and dropped: its entry goes at the next listing.
        drop(b);
        list(&cache, std::slice::from_ref(&a2), 1, &encodes);
        assert_eq!(cache.len(), 1);
        drop((a, a2));
        list(&cache, &[], 0, &encodes);
        assert_eq!(cache.len(), 0);
    }
}
