//! Seeding the object-store emulators' own on-disk stores with [`many_checkpoints`], for the
//! checkpoint resolver's large-prefix tests on Google Cloud Storage and Azure Blob Storage
//! (`cli/tests/checkpoint_stores.rs`). Through their APIs the emulators take 50 to 300 writes
//! a second on the 2-core test machine, so 100,000 objects would take 6 to 30 minutes; written
//! here in the format the server itself persists, they take seconds, and the server then
//! lists and reads them through its real API.
//!
//! Each seeder takes the shape of its records from a `template` object that the test wrote
//! through the server's API (so the records follow the running version of the server, not a
//! copy of its format kept here) and sets per object only what differs: name, size, hashes,
//! ids and where the content lies.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::Value;

use crate::checkpoints::many_checkpoints;

/// The extended attribute in which fake-gcs-server's filesystem backend keeps an object's
/// attributes (JSON), where the file system supports extended attributes.
const GCS_ATTRIBUTES: &str = "user.metadata";
/// Where it keeps them otherwise: a file beside the object, the name with this suffix.
const GCS_ATTRIBUTES_FILE: &str = ".metadata";

/// Lays out [`many_checkpoints`]`(prefix, count, per_dir)` in a bucket of fake-gcs-server's
/// filesystem backend (`-backend filesystem`; `bucket_dir` is `<filesystem-root>/<bucket>`),
/// while the server runs: it reads objects from disk on each request. `template` is the key of
/// an object the server wrote itself in that bucket; every object gets a copy of its attributes
/// with its own MD5, CRC32C, ETag and generation. Returns how many objects it wrote.
pub fn seed_fake_gcs(
    bucket_dir: &Path,
    template: &str,
    prefix: &str,
    count: u64,
    per_dir: u64,
) -> u64 {
    let template_path = bucket_dir.join(template);
    let beside = attributes_file(&template_path);
    let in_file = beside.exists();
    let raw = if in_file {
        fs::read(&beside).unwrap_or_else(|e| panic!("reading {}: {e}", beside.display()))
    } else {
        let mut buf = vec![0u8; 64 * 1024];
        let len = rustix::fs::getxattr(&template_path, GCS_ATTRIBUTES, &mut buf[..])
            .unwrap_or_else(|e| {
                panic!(
                    "reading {GCS_ATTRIBUTES} of {} (fake-gcs-server's layout changed?): {e}",
                    template_path.display()
                )
            });
        buf.truncate(len);
        buf
    };
    let attributes: Value = serde_json::from_slice(&raw).expect("the template's attributes");
    let generation = attributes["Generation"].as_i64().unwrap_or(1);
    let quoted_etag = attributes["Etag"]
        .as_str()
        .is_some_and(|e| e.starts_with('"'));
    let mut parent = PathBuf::new();
    let mut objects = 0;
    for (key, body) in many_checkpoints(prefix, count, per_dir) {
        let path = bucket_dir.join(&key);
        if let Some(dir) = path.parent().filter(|dir| *dir != parent) {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            parent = dir.to_path_buf();
        }
        fs::write(&path, &body).unwrap_or_else(|e| panic!("writing {key}: {e}"));
        let md5 = b64(&Md5::digest(body.as_bytes()));
        let crc32c = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, body.as_bytes());
        let mut object = attributes.clone();
        object["Crc32c"] = b64(&(crc32c as u32).to_be_bytes()).into();
        object["Etag"] = if quoted_etag {
            format!("\"{md5}\"")
        } else {
            md5.clone()
        }
        .into();
        object["Md5Hash"] = md5.into();
        object["Generation"] = (generation + objects as i64 + 1).into();
        let encoded = serde_json::to_vec(&object).expect("attributes encode");
        let written = if in_file {
            fs::write(attributes_file(&path), &encoded).map_err(|e| e.to_string())
        } else {
            rustix::fs::setxattr(
                &path,
                GCS_ATTRIBUTES,
                &encoded,
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| e.to_string())
        };
        written.unwrap_or_else(|e| panic!("writing the attributes of {key}: {e}"));
        objects += 1;
    }
    objects
}

fn attributes_file(object: &Path) -> PathBuf {
    let mut name = object.as_os_str().to_owned();
    name.push(GCS_ATTRIBUTES_FILE);
    PathBuf::from(name)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Azurite's blob database (LokiJS, JSON) and extent database under `--location`.
const AZURITE_BLOBS_DB: &str = "__azurite_db_blob__.json";
const AZURITE_EXTENTS_DB: &str = "__azurite_db_blob_extent__.json";
/// Where Azurite keeps the extents (the files that hold blob contents) under `--location`.
const AZURITE_EXTENTS_DIR: &str = "__blobstorage__";

/// Adds [`many_checkpoints`]`(prefix, count, per_dir)` to the database of an Azurite that ran
/// with `--location location` and has stopped (it loads the database when it starts and
/// writes it back when it stops). `template` is the name of a blob that Azurite wrote in
/// `container` (it is replaced with the seeded blob of that name); every blob is a copy of its
/// record with its own name, id, length, MD5 and ETag. Contents equal to the template's share
/// its bytes; the others are appended to the template's extent file. Returns how many blobs
/// it wrote.
pub fn seed_azurite(
    location: &Path,
    container: &str,
    template: &str,
    prefix: &str,
    count: u64,
    per_dir: u64,
) -> u64 {
    let mut blobs_db = read_json(&location.join(AZURITE_BLOBS_DB));
    let mut extents_db = read_json(&location.join(AZURITE_EXTENTS_DB));
    let blobs = collection(&mut blobs_db, "$BLOBS_COLLECTION$");
    let data = blobs["data"].as_array_mut().expect("the blobs' records");
    let ours = |doc: &Value, name: &str| {
        doc["containerName"] == container && doc["name"].as_str().is_some_and(|n| n == name)
    };
    let record = data
        .iter()
        .find(|doc| ours(doc, template))
        .unwrap_or_else(|| panic!("no blob {template} in {container} (Azurite's layout changed?)"))
        .clone();
    let in_prefix = format!("{prefix}/");
    data.retain(|doc| {
        !(doc["containerName"] == container
            && doc["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&in_prefix)))
    });
    let extent_id = record["persistency"]["id"].clone();
    let extents = collection(&mut extents_db, "$EXTENTS_COLLECTION$");
    let extent = extents["data"]
        .as_array_mut()
        .and_then(|all| all.iter_mut().find(|e| e["id"] == extent_id))
        .expect("the template's extent");
    let extent_path = location
        .join(AZURITE_EXTENTS_DIR)
        .join(extent["path"].as_str().expect("the extent's path"));
    let mut extent_file = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(&extent_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", extent_path.display()));
    // Where each distinct content lies in the extent, starting with the template's own.
    let mut placed: HashMap<String, Value> = HashMap::new();
    let mut template_body = vec![0; record["persistency"]["count"].as_u64().unwrap_or(0) as usize];
    let offset = record["persistency"]["offset"].as_u64().unwrap_or(0);
    extent_file
        .seek(SeekFrom::Start(offset))
        .and_then(|_| extent_file.read_exact(&mut template_body))
        .expect("reading the template's content");
    placed.insert(
        String::from_utf8_lossy(&template_body).into_owned(),
        record["persistency"].clone(),
    );
    let mut end = extent_file.metadata().expect("the extent's size").len();
    let mut id = blobs["maxId"].as_u64().unwrap_or(0);
    let data = blobs["data"].as_array_mut().expect("the blobs' records");
    let mut objects = 0;
    for (key, body) in many_checkpoints(prefix, count, per_dir) {
        let persistency = placed.entry(body.clone()).or_insert_with(|| {
            extent_file
                .write_all(body.as_bytes())
                .expect("appending to the extent");
            end += body.len() as u64;
            serde_json::json!({"id": extent_id, "offset": end - body.len() as u64, "count": body.len()})
        });
        id += 1;
        let mut doc = record.clone();
        doc["name"] = key.into();
        doc["$loki"] = id.into();
        doc["persistency"] = persistency.clone();
        let properties = &mut doc["properties"];
        properties["contentLength"] = body.len().into();
        properties["contentMD5"]["data"] = Md5::digest(body.as_bytes()).to_vec().into();
        properties["etag"] = format!("\"0x1D{id:014X}\"").into();
        data.push(doc);
        objects += 1;
    }
    blobs["maxId"] = id.into();
    reindex(blobs);
    extent["size"] = end.into();
    write_json(&location.join(AZURITE_BLOBS_DB), &blobs_db);
    write_json(&location.join(AZURITE_EXTENTS_DB), &extents_db);
    objects
}

/// Rebuilds a LokiJS collection's indexes after records were added: each binary index lists
/// the records' positions ordered by that field, the id index their ids in order.
fn reindex(collection: &mut Value) {
    let all = std::mem::take(&mut collection["data"]);
    let data = all.as_array().map(Vec::as_slice).unwrap_or_default();
    if let Some(indexes) = collection["binaryIndices"].as_object_mut() {
        for (field, index) in indexes.iter_mut() {
            let keys: Vec<&Value> = data.iter().map(|doc| &doc[field]).collect();
            let mut order: Vec<usize> = (0..data.len()).collect();
            order.sort_by(|&a, &b| loki_order(keys[a], keys[b]));
            index["values"] = order.into();
            index["dirty"] = false.into();
        }
    }
    if collection["idIndex"].is_array() {
        collection["idIndex"] = data.iter().map(|doc| doc["$loki"].clone()).collect();
    }
    collection["data"] = all;
}

/// The order LokiJS sorts a field by, for the strings and numbers Azurite indexes.
fn loki_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&b.as_f64().unwrap_or(0.0)),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

fn collection<'a>(db: &'a mut Value, name: &str) -> &'a mut Value {
    db["collections"]
        .as_array_mut()
        .and_then(|all| all.iter_mut().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no collection {name} in Azurite's database"))
}

fn read_json(path: &Path) -> Value {
    let text = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn write_json(path: &Path, value: &Value) {
    let file = fs::File::create(path).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut out, value)
        .and_then(|()| out.flush().map_err(serde_json::Error::io))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
