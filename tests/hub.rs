//! `glm::hub` against a Hub lookalike on 127.0.0.1: listing, the cache layout
//! `huggingface_hub` writes, resuming, hash checks, tokens, offline use, the space check,
//! concurrent fetches and hostile answers.

#[path = "common/hub_server.rs"]
mod hub_server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use glm::hub::{Hub, HubError, HubSettings, Snapshot};
use hub_server::{git_blob_sha1, is_lfs, sha256_hex, temp_cache, Fault, HubServer, RepoSpec};

const REPO: &str = "zai-org/GLM-Tiny";
const MODEL: &str = "model.safetensors";

fn hub(server: &HubServer, cache: &Path) -> Hub {
    Hub::new(HubSettings {
        endpoint: server.endpoint(),
        token: None,
        offline: false,
        cache: cache.to_path_buf(),
    })
}

fn offline_hub(cache: &Path) -> Hub {
    let settings = HubSettings {
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        offline: true,
        cache: cache.into(),
    };
    Hub::new(settings)
}

fn names(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.files.iter().map(|f| f.name.as_str()).collect()
}

fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// The blob name `huggingface_hub` gives a file: its sha256 in LFS, else its git sha1.
fn etag(name: &str, bytes: &[u8]) -> String {
    if is_lfs(name) {
        sha256_hex(bytes)
    } else {
        git_blob_sha1(bytes)
    }
}

fn fetch_all(hub: &Hub, repo: &str) -> Result<(Snapshot, PathBuf), HubError> {
    let snapshot = hub.snapshot(repo, "main")?;
    let dir = hub.fetch(&snapshot, &names(&snapshot))?;
    Ok((snapshot, dir))
}

/// Everything in the repository's `blobs` folder, sorted.
fn blobs_folder(cache: &Path, repo: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(repo_dir(cache, repo).join("blobs")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn one_line_naming(error: &HubError, words: &[&str]) {
    let text = error.to_string();
    assert!(!text.contains('\n'), "more than one line: {text}");
    for word in words {
        assert!(text.contains(word), "{text:?} does not say {word:?}");
    }
}

#[test]
fn fetch_lays_out_the_cache_as_huggingface_hub_does() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let spec = server.repo(REPO);
    let (_tmp, cache) = temp_cache();
    let (snapshot, dir) = fetch_all(&hub(&server, &cache), REPO).expect("fetch");

    assert_eq!(snapshot.commit, spec.commit);
    assert_eq!(dir, repo_dir(&cache, REPO).join("snapshots").join(&spec.commit));
    let model = snapshot.files.iter().find(|f| f.name == MODEL).expect("listed");
    assert_eq!(model.sha256.as_deref(), Some(sha256_hex(spec.file(MODEL)).as_str()));
    assert_eq!(model.size, Some(spec.file(MODEL).len() as u64));
    for (name, bytes) in &spec.files {
        let link = dir.join(name);
        assert_eq!(&std::fs::read(&link).expect("cached file"), bytes, "{name}");
        let target = std::fs::read_link(&link).expect("a symbolic link");
        assert_eq!(target, Path::new("../../blobs").join(etag(name, bytes)), "{name}");
    }
    let refs = std::fs::read_to_string(repo_dir(&cache, REPO).join("refs/main")).expect("refs/main");
    assert_eq!(refs, spec.commit);
    let by_commit = hub(&server, &cache)
        .snapshot(REPO, &spec.commit)
        .expect("listing by commit");
    assert_eq!(by_commit, snapshot);
    let refs: Vec<_> = std::fs::read_dir(repo_dir(&cache, REPO).join("refs"))
        .expect("refs")
        .flatten()
        .collect();
    assert_eq!(refs.len(), 1, "a commit is not a ref: {refs:?}");
    // Only finished blobs: no partial download, lock or temporary file is left.
    let mut expected: Vec<String> = spec.files.iter().map(|(n, b)| etag(n, b)).collect();
    expected.sort();
    assert_eq!(blobs_folder(&cache, REPO), expected);
}

#[test]
fn a_second_fetch_asks_nothing_and_the_cache_serves_offline() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let spec = server.repo(REPO);
    let (_tmp, cache) = temp_cache();
    let hub = hub(&server, &cache);
    let (snapshot, dir) = fetch_all(&hub, REPO).expect("fetch");
    let asked = server.request_count();

    assert_eq!(hub.fetch(&snapshot, &names(&snapshot)).expect("again"), dir);
    assert_eq!(server.request_count(), asked, "the second fetch went to the server");

    let offline = offline_hub(&cache);
    for revision in ["main", spec.commit.as_str()] {
        let cached = offline.snapshot(REPO, revision).expect("offline snapshot");
        assert_eq!(cached.commit, spec.commit);
        let listed: Vec<(String, Option<u64>)> = cached.files.iter().map(|f| (f.name.clone(), f.size)).collect();
        let mut expected: Vec<(String, Option<u64>)> = spec
            .files
            .iter()
            .map(|(n, b)| (n.clone(), Some(b.len() as u64)))
            .collect();
        expected.sort();
        assert_eq!(listed, expected);
        assert_eq!(offline.fetch(&cached, &names(&cached)).expect("offline fetch"), dir);
    }
    assert_eq!(offline.cached_snapshot(REPO, "v2"), None);
    assert_eq!(server.request_count(), asked);
}

#[test]
fn nested_files_are_linked_relative_to_their_folder() {
    let files = vec![
        ("sub/dir/notes.json", b"{}".to_vec()),
        ("sub/w.safetensors", vec![7u8; 5000]),
    ];
    let server = HubServer::start(vec![RepoSpec::new("org/nested", files)]);
    let (_tmp, cache) = temp_cache();
    let (_, dir) = fetch_all(&hub(&server, &cache), "org/nested").expect("fetch");
    let target = std::fs::read_link(dir.join("sub/dir/notes.json")).expect("link");
    assert_eq!(target, Path::new("../../../../blobs").join(git_blob_sha1(b"{}")));
    let target = std::fs::read_link(dir.join("sub/w.safetensors")).expect("link");
    assert_eq!(target, Path::new("../../../blobs").join(sha256_hex(&[7u8; 5000])));
    assert_eq!(
        std::fs::read(dir.join("sub/w.safetensors")).expect("read"),
        vec![7u8; 5000]
    );
}

#[cfg(unix)]
#[test]
fn a_cache_written_by_huggingface_hub_is_found_and_used() {
    let (_tmp, cache) = temp_cache();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let root = repo_dir(&cache, "org/handmade");
    let config = b"{\"model_type\": \"glm\"}".to_vec();
    let blob = git_blob_sha1(&config);
    let snapshot_dir = root.join("snapshots").join(commit);
    std::fs::create_dir_all(root.join("blobs")).expect("mkdir");
    std::fs::create_dir_all(snapshot_dir.join("sub")).expect("mkdir");
    std::fs::create_dir_all(root.join("refs")).expect("mkdir");
    std::fs::write(root.join("blobs").join(&blob), &config).expect("write");
    std::fs::write(root.join("refs/main"), commit).expect("write");
    std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot_dir.join("config.json")).expect("link");
    std::os::unix::fs::symlink(format!("../../../blobs/{blob}"), snapshot_dir.join("sub/copy.json")).expect("link");
    std::os::unix::fs::symlink("../../blobs/missing", snapshot_dir.join("dangling.json")).expect("link");

    let server = HubServer::start(Vec::new());
    for hub in [offline_hub(&cache), hub(&server, &cache)] {
        let snapshot = hub.cached_snapshot("org/handmade", "main").expect("found");
        assert_eq!(snapshot.commit, commit);
        assert_eq!(names(&snapshot), ["config.json", "sub/copy.json"]);
        assert_eq!(snapshot.files[0].size, Some(config.len() as u64));
        let dir = hub
            .fetch(&snapshot, &["config.json", "sub/copy.json"])
            .expect("present");
        assert_eq!(std::fs::read(dir.join("sub/copy.json")).expect("read"), config);
    }
    assert_eq!(server.request_count(), 0);
}

#[test]
fn a_cut_transfer_resumes_where_it_stopped() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let model = server.repo(REPO).file(MODEL).to_vec();
    let cut = 300_000;
    server.set_fault(REPO, MODEL, Fault::CutOnce(cut));
    let (_tmp, cache) = temp_cache();
    let (_, dir) = fetch_all(&hub(&server, &cache), REPO).expect("fetch resumes");

    assert_eq!(std::fs::read(dir.join(MODEL)).expect("model"), model);
    let transfers = server.downloads(REPO, MODEL);
    assert_eq!(transfers.len(), 2, "{transfers:?}");
    assert_eq!(transfers[0].range, None);
    assert_eq!(transfers[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    assert_eq!(server.bytes_served(REPO, MODEL), model.len() as u64, "bytes sent twice");
}

#[test]
fn a_partial_download_left_by_an_interrupted_run_is_resumed() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let model = server.repo(REPO).file(MODEL).to_vec();
    let (_tmp, cache) = temp_cache();
    let blobs_dir = repo_dir(&cache, REPO).join("blobs");
    std::fs::create_dir_all(&blobs_dir).expect("mkdir");
    let have = 100_000;
    std::fs::write(
        blobs_dir.join(format!("{}.incomplete", sha256_hex(&model))),
        &model[..have],
    )
    .expect("write");

    let (_, dir) = fetch_all(&hub(&server, &cache), REPO).expect("fetch");
    assert_eq!(std::fs::read(dir.join(MODEL)).expect("model"), model);
    let transfers = server.downloads(REPO, MODEL);
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0].range.as_deref(), Some(format!("bytes={have}-").as_str()));
    assert_eq!(server.bytes_served(REPO, MODEL), (model.len() - have) as u64);
}

#[test]
fn a_server_that_ignores_the_range_is_downloaded_from_the_start() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let model = server.repo(REPO).file(MODEL).to_vec();
    server.set_fault(REPO, MODEL, Fault::IgnoreRange);
    let (_tmp, cache) = temp_cache();
    let blobs_dir = repo_dir(&cache, REPO).join("blobs");
    std::fs::create_dir_all(&blobs_dir).expect("mkdir");
    // Bytes that are not the file's: kept, they would spoil the result.
    std::fs::write(
        blobs_dir.join(format!("{}.incomplete", sha256_hex(&model))),
        vec![0u8; 1000],
    )
    .expect("write");

    let (_, dir) = fetch_all(&hub(&server, &cache), REPO).expect("fetch");
    assert_eq!(std::fs::read(dir.join(MODEL)).expect("model"), model);
    let transfers = server.downloads(REPO, MODEL);
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0].range.as_deref(), Some("bytes=1000-"));
}

#[test]
fn a_small_file_without_an_etag_is_checked_by_size_and_named_by_its_git_hash() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let config = server.repo(REPO).file("config.json").to_vec();
    server.set_fault(REPO, "config.json", Fault::NoEtag);
    let (_tmp, cache) = temp_cache();
    let hub = hub(&server, &cache);
    let snapshot = hub.snapshot(REPO, "main").expect("listing");
    let dir = hub.fetch(&snapshot, &["config.json"]).expect("fetch");
    assert_eq!(std::fs::read(dir.join("config.json")).expect("read"), config);
    assert_eq!(
        std::fs::read_link(dir.join("config.json")).expect("link"),
        Path::new("../../blobs").join(git_blob_sha1(&config))
    );
    assert_eq!(blobs_folder(&cache, REPO), [git_blob_sha1(&config)]);
}

#[test]
fn a_corrupt_download_is_refused_and_removed() {
    for file in [MODEL, "config.json"] {
        let server = HubServer::fixture(REPO, "glm-tiny");
        server.set_fault(REPO, file, Fault::Corrupt);
        let (_tmp, cache) = temp_cache();
        let hub = hub(&server, &cache);
        let snapshot = hub.snapshot(REPO, "main").expect("listing");
        let error = hub.fetch(&snapshot, &[file]).expect_err("corrupt file accepted");
        assert!(matches!(error, HubError::HashMismatch { .. }), "{error:?}");
        one_line_naming(&error, &[file]);
        assert_eq!(blobs_folder(&cache, REPO), Vec::<String>::new(), "{file}");
        assert!(!hub.snapshot_dir(&snapshot).join(file).exists());
        assert_eq!(server.downloads(REPO, file).len(), 1);
    }
}

#[test]
fn tokens_denials_and_unknown_repositories_are_one_line_each() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    server.require_token("secret");
    let (_tmp, cache) = temp_cache();
    let with = |token: Option<&str>| {
        let settings = HubSettings {
            endpoint: server.endpoint(),
            token: token.map(str::to_string),
            offline: false,
            cache: cache.clone(),
        };
        Hub::new(settings)
    };
    for (token, status) in [(None, 401), (Some("wrong"), 403)] {
        let error = with(token).snapshot(REPO, "main").expect_err("no access");
        assert!(
            matches!(error, HubError::Denied { status: s, .. } if s == status),
            "{error:?}"
        );
        one_line_naming(&error, &[REPO, "HF_TOKEN", &status.to_string()]);
    }
    let error = with(Some("secret"))
        .snapshot("zai-org/Nothing", "main")
        .expect_err("no such repo");
    assert!(matches!(error, HubError::NotFound { .. }), "{error:?}");
    one_line_naming(&error, &["zai-org/Nothing", "404"]);
    let error = with(Some("secret"))
        .snapshot(REPO, "no-such-branch")
        .expect_err("no such branch");
    assert!(matches!(error, HubError::NotFound { .. }), "{error:?}");

    fetch_all(&with(Some("secret")), REPO).expect("with the token");
    let cdn: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("/cdn/"))
        .collect();
    assert!(!cdn.is_empty());
    assert!(
        cdn.iter().all(|l| l.authorization.is_none()),
        "the token went to the CDN: {cdn:?}"
    );
}

#[test]
fn offline_without_a_cache_says_so_without_a_request() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let (_tmp, cache) = temp_cache();
    let settings = HubSettings {
        endpoint: server.endpoint(),
        token: None,
        offline: true,
        cache: cache.clone(),
    };
    let error = Hub::new(settings).snapshot(REPO, "main").expect_err("nothing cached");
    assert!(matches!(error, HubError::Offline { .. }), "{error:?}");
    one_line_naming(&error, &[REPO, "HF_HUB_OFFLINE"]);
    assert_eq!(server.request_count(), 0);
}

#[test]
fn too_little_space_is_refused_before_any_transfer() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let petabyte = 1u64 << 50;
    server.list_size(REPO, MODEL, petabyte);
    let (_tmp, cache) = temp_cache();
    let error = fetch_all(&hub(&server, &cache), REPO).expect_err("a petabyte fits");
    let HubError::NoSpace { needed, available, dir } = &error else {
        panic!("{error:?}")
    };
    assert!(*needed >= petabyte && *available < petabyte, "{error}");
    assert!(dir.starts_with(&cache), "{error}");
    one_line_naming(
        &error,
        &[&glm_convert::byte_label(*needed), &glm_convert::byte_label(*available)],
    );
    assert_eq!(server.download_count(), 0, "{:?}", server.log());
}

#[test]
fn fetches_at_the_same_time_download_each_file_once() {
    let server = HubServer::fixture(REPO, "glm4-tiny");
    server.slow_down(Duration::from_millis(5));
    let spec = server.repo(REPO);
    let (_tmp, cache) = temp_cache();
    let dirs: Vec<PathBuf> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| fetch_all(&hub(&server, &cache), REPO).expect("fetch").1))
            .collect();
        runs.into_iter().map(|r| r.join().expect("thread")).collect()
    });
    for (name, bytes) in &spec.files {
        assert_eq!(
            server.downloads(REPO, name).len(),
            1,
            "{name} downloaded more than once"
        );
        for dir in &dirs {
            assert_eq!(&std::fs::read(dir.join(name)).expect("file"), bytes);
        }
    }
}

#[test]
fn hostile_listings_are_refused_and_write_nothing_outside_the_cache() {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    for name in ["../evil", "/tmp/glm-hub-test-evil", "a/../../evil", "a\\..\\evil", ""] {
        let server = HubServer::fixture(REPO, "glm-tiny");
        let listing = serde_json::json!({"sha": commit, "siblings": [{"rfilename": name, "size": 3}]});
        server.set_listing(REPO, &listing.to_string());
        let (tmp, cache) = temp_cache();
        let error = hub(&server, &cache)
            .snapshot(REPO, "main")
            .expect_err("unsafe name accepted");
        one_line_naming(&error, &["unsafe"]);
        assert!(!tmp.path().join("evil").exists() && !Path::new("/tmp/glm-hub-test-evil").exists());
    }
    for body in ["not json", "{\"sha\": \"../../x\", \"siblings\": []}", "[]"] {
        let server = HubServer::fixture(REPO, "glm-tiny");
        server.set_listing(REPO, body);
        let (_tmp, cache) = temp_cache();
        let error = hub(&server, &cache)
            .snapshot(REPO, "main")
            .expect_err("bad listing accepted");
        assert!(matches!(error, HubError::Http { .. }), "{error:?}");
        one_line_naming(&error, &[]);
    }
}

#[test]
fn hostile_downloads_fail_cleanly() {
    for (file, fault) in [
        (MODEL, Fault::RedirectWithoutLocation),
        ("config.json", Fault::EndlessBody),
    ] {
        let server = HubServer::fixture(REPO, "glm-tiny");
        server.set_fault(REPO, file, fault.clone());
        let (_tmp, cache) = temp_cache();
        let hub = hub(&server, &cache);
        let snapshot = hub.snapshot(REPO, "main").expect("listing");
        let error = hub.fetch(&snapshot, &[file]).expect_err("hostile answer accepted");
        one_line_naming(&error, &[]);
        assert!(!hub.snapshot_dir(&snapshot).join(file).exists(), "{fault:?}");
        assert_eq!(blobs_folder(&cache, REPO), Vec::<String>::new(), "{fault:?}");
    }
}

#[test]
fn sizes_other_than_listed_are_refused() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let spec = server.repo(REPO);
    let config = spec.file("config.json").len() as u64;
    let model = spec.file(MODEL).len() as u64;
    server.list_size(REPO, "config.json", config + 10);
    server.list_size(REPO, MODEL, model - 10);
    let (_tmp, cache) = temp_cache();
    let hub = hub(&server, &cache);
    let snapshot = hub.snapshot(REPO, "main").expect("listing");
    for (file, says) in [("config.json", "broke off"), (MODEL, "more than")] {
        let error = hub.fetch(&snapshot, &[file]).expect_err("wrong size accepted");
        one_line_naming(&error, &[says]);
        assert!(!hub.snapshot_dir(&snapshot).join(file).exists());
    }
    let finished: Vec<String> = blobs_folder(&cache, REPO)
        .into_iter()
        .filter(|n| !n.contains('.'))
        .collect();
    assert_eq!(finished, Vec::<String>::new());
}

#[test]
fn unknown_names_are_refused() {
    let server = HubServer::fixture(REPO, "glm-tiny");
    let (_tmp, cache) = temp_cache();
    let hub = hub(&server, &cache);
    let snapshot = hub.snapshot(REPO, "main").expect("listing");
    let error = hub.fetch(&snapshot, &["nothing.bin"]).expect_err("unlisted file");
    assert!(matches!(error, HubError::NotInSnapshot { .. }), "{error:?}");
    for repo in ["glm", "../x/y", "a/b/c"] {
        assert!(
            matches!(hub.snapshot(repo, "main"), Err(HubError::InvalidName { .. })),
            "{repo}"
        );
    }
    assert!(matches!(
        hub.snapshot(REPO, "../main"),
        Err(HubError::InvalidName { .. })
    ));
}

#[test]
fn settings_follow_the_huggingface_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-file\n").expect("write");
    let home = Some(PathBuf::from("/home/u"));
    let settings = |vars: &[(&str, String)]| {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let get = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        HubSettings::from_vars(get, home.clone()).expect("settings")
    };
    let plain = settings(&[]);
    assert_eq!(plain.endpoint, "https://huggingface.co");
    assert_eq!(plain.cache, Path::new("/home/u/.cache/huggingface/hub"));
    assert!(!plain.offline && plain.token.is_none());

    let hf_home = dir.path().to_string_lossy().into_owned();
    let set = settings(&[
        ("HF_ENDPOINT", "http://mirror.local/".into()),
        ("HF_HUB_OFFLINE", "yes".into()),
        ("HF_HOME", hf_home.clone()),
    ]);
    assert_eq!(set.endpoint, "http://mirror.local");
    assert!(set.offline);
    assert_eq!(set.cache, dir.path().join("hub"));
    assert_eq!(set.token.as_deref(), Some("from-file"));

    let set = settings(&[
        ("HF_HUB_CACHE", "/c".into()),
        ("HF_HOME", hf_home),
        ("HF_TOKEN", "env".into()),
    ]);
    assert_eq!(
        (set.cache.as_path(), set.token.as_deref()),
        (Path::new("/c"), Some("env"))
    );
    let path = token_file.to_string_lossy().into_owned();
    let set = settings(&[("HF_TOKEN_PATH", path), ("HF_HUB_OFFLINE", "0".into())]);
    assert_eq!(set.token.as_deref(), Some("from-file"));
    assert!(!set.offline);
    assert!(HubSettings::from_vars(|n| (n == "HF_ENDPOINT").then(|| "ftp://x".to_string()), None).is_err());
}
