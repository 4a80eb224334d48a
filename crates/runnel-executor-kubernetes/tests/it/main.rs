//! The executor's client side against `runnel-fake-kube`: leftover pods found by label.

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
