//! The executor's client side against `runnel-fake-kube`: leftover pods found by label, and
//! pod watches as the executor reads them.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use runnel_executor::Shell;
use runnel_executor_kubernetes::{KubernetesOptions, KubernetesProvider, KubernetesSettings};
use runnel_fake_kube::{FakeConfig, FakeKube};

fn provider(kube: &FakeKube, short_token: &str) -> KubernetesProvider {
    let table: toml::Table = format!(
        "host = \"{}\"\nbearer_token = \"{}\"\nnamespace = \"default\"\n",
        kube.url(),
        kube.token()
    )
    .parse()
    .unwrap();
    let options = KubernetesOptions::from_raw(&runnel_config::RawTable::from(table)).unwrap();
    KubernetesProvider::new(
        KubernetesSettings {
            runner_name: "test".to_owned(),
            short_token: short_token.to_owned(),
            shell: Shell::Sh,
        },
        options,
    )
}

/// A pod of runner `short_token` whose image does not exist (it stays `Pending`, so no
/// container is started).
async fn create_pod(kube: &FakeKube, name: &str, short_token: &str) {
    let mut config = kube::Config::new(kube.url().parse().unwrap());
    config.auth_info.token = Some(kube.token().to_owned().into());
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"manager.runner.gitlab.com/id-short": short_token}},
        "spec": {"containers": [{"name": "build", "image": "runnel-it-absent:0"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

#[tokio::test]
async fn leftover_pods_of_this_runner_are_deleted_and_others_kept() {
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    create_pod(
        &kube,
        "runner-aaaa1111-project-1-concurrent-0-left1",
        "aaaa1111",
    )
    .await;
    create_pod(
        &kube,
        "runner-bbbb2222-project-1-concurrent-0-other",
        "bbbb2222",
    )
    .await;
    let removed = provider(&kube, "aaaa1111")
        .remove_leftovers()
        .await
        .unwrap();
    assert_eq!(removed, ["runner-aaaa1111-project-1-concurrent-0-left1"]);
    assert_eq!(
        kube.pod_names(),
        ["default/runner-bbbb2222-project-1-concurrent-0-other"]
    );
    kube.shutdown().await;
}

#[tokio::test]
async fn a_wrong_token_is_reported_with_the_api_servers_answer() {
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    let table: toml::Table = format!("host = \"{}\"\nbearer_token = \"wrong\"\n", kube.url())
        .parse()
        .unwrap();
    let options = KubernetesOptions::from_raw(&runnel_config::RawTable::from(table)).unwrap();
    let provider = KubernetesProvider::new(
        KubernetesSettings {
            runner_name: "test".to_owned(),
            short_token: "aaaa1111".to_owned(),
            shell: Shell::Sh,
        },
        options,
    );
    let error = provider.remove_leftovers().await.unwrap_err();
    let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(chain.contains("list pods in default"), "{chain}");
    assert!(chain.contains("Unauthorized"), "{chain}");
    kube.shutdown().await;
}

/// The next watch event within 60 s.
async fn next_event<S>(stream: &mut S) -> kube::api::WatchEvent<Pod>
where
    S: futures::Stream<Item = Result<kube::api::WatchEvent<Pod>, kube::Error>> + Unpin,
{
    use futures::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(60), stream.next())
        .await
        .expect("an event within 60 s")
        .expect("the watch goes on")
        .expect("a well-formed event")
}

#[tokio::test]
async fn pod_watches_follow_changes_from_a_resource_version() {
    use kube::api::{DeleteParams, WatchEvent, WatchParams};
    let kube = FakeKube::start(FakeConfig::default()).await.unwrap();
    let mut config = kube::Config::new(kube.url().parse().unwrap());
    config.auth_info.token = Some(kube.token().to_owned().into());
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "watched"},
        "spec": {"containers": [{"name": "build", "image": "runnel-it-absent:0"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let version = created.metadata.resource_version.clone().unwrap();
    let params = WatchParams::default().fields("metadata.name=watched");
    let mut stream = Box::pin(pods.watch(&params, &version).await.unwrap());
    // The kubelet's report that the image cannot be pulled comes as a change.
    let WatchEvent::Modified(changed) = next_event(&mut stream).await else {
        panic!("a change after the creation's version");
    };
    let waiting = changed.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ErrImagePull"));
    assert!(
        changed
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > version.parse::<u64>().unwrap()
    );
    pods.delete("watched", &DeleteParams::default())
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Deleted(_)
    ));
    // From the creation's version again: the same changes, in order.
    let mut replay = Box::pin(pods.watch(&params, &version).await.unwrap());
    assert!(matches!(
        next_event(&mut replay).await,
        WatchEvent::Modified(_)
    ));
    assert!(matches!(
        next_event(&mut replay).await,
        WatchEvent::Deleted(_)
    ));
    // Without a version: the current state, as additions; only the selected pod.
    create_pod(
        &kube,
        "runner-aaaa1111-project-1-concurrent-0-one",
        "aaaa1111",
    )
    .await;
    create_pod(
        &kube,
        "runner-aaaa1111-project-1-concurrent-1-two",
        "aaaa1111",
    )
    .await;
    let mut current = Box::pin(
        pods.watch(
            &WatchParams::default()
                .fields("metadata.name=runner-aaaa1111-project-1-concurrent-1-two"),
            "0",
        )
        .await
        .unwrap(),
    );
    let WatchEvent::Added(added) = next_event(&mut current).await else {
        panic!("the current state first");
    };
    assert_eq!(
        added.metadata.name.as_deref(),
        Some("runner-aaaa1111-project-1-concurrent-1-two")
    );
    // A field the server does not select on is refused, as a real server does.
    let refused = pods
        .watch(&WatchParams::default().fields("spec.nodeName=node-1"), "0")
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(status)) if status.code == 400),
        "{:?}",
        refused.err()
    );
    assert!(kube.watches_served() >= 3);
    kube.shutdown().await;
}
