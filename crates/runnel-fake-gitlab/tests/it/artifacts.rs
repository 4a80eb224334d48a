//! Artifact upload and download, redirects, rejections.

use reqwest::multipart::{Form, Part};
use runnel_fake_gitlab::{ArtifactUploadMode, JobBuilder};

use crate::support::{api, client, header, start, take_job};

fn form(data: &'static [u8]) -> Form {
    Form::new().part("file", Part::bytes(data).file_name("artifacts.zip"))
}

const QUERY: [(&str, &str); 3] = [
    ("expire_in", "7d"),
    ("artifact_format", "zip"),
    ("artifact_type", "archive"),
];

#[tokio::test]
async fn upload_and_download_round_trip() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    let url = api(&fake, &format!("jobs/{id}/artifacts"));
    let response = client()
        .post(&url)
        .query(&QUERY)
        .header("JOB-TOKEN", &token)
        .multipart(form(b"PK\x03\x04zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let job = fake.job(id).unwrap();
    let artifact = &job.artifacts[0];
    assert_eq!(artifact.filename, "artifacts.zip");
    assert_eq!(artifact.data.as_ref(), b"PK\x03\x04zip");
    assert_eq!(artifact.expire_in.as_deref(), Some("7d"));
    assert_eq!(artifact.artifact_format.as_deref(), Some("zip"));

    let response = client()
        .get(&url)
        .header("JOB-TOKEN", "glcbt-other")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = client()
        .get(&url)
        .header("JOB-TOKEN", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"PK\x03\x04zip");
}

#[tokio::test]
async fn upload_needs_a_file_part_and_the_job_token() {
    let fake = start().await;
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    let url = api(&fake, &format!("jobs/{id}/artifacts"));
    let response = client()
        .post(&url)
        .header("JOB-TOKEN", &token)
        .multipart(Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = client()
        .post(&url)
        .multipart(form(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(fake.job(id).unwrap().artifacts.is_empty());
}

#[tokio::test]
async fn direct_download_redirects_to_object_storage() {
    let fake = start().await;
    fake.set_direct_download_redirect(true);
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    let url = api(&fake, &format!("jobs/{id}/artifacts"));
    client()
        .post(&url)
        .header("JOB-TOKEN", &token)
        .multipart(form(b"data"))
        .send()
        .await
        .unwrap();

    let response = client()
        .get(&url)
        .query(&[("direct_download", "true")])
        .header("JOB-TOKEN", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let location = header(&response, "Location").unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{}/-/object-storage/", fake.url())),
        "{location}"
    );
    let response = client().get(&location).send().await.unwrap();
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"data");

    let response = client()
        .get(&url)
        .header("JOB-TOKEN", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "without direct_download the API serves the bytes"
    );
}

#[tokio::test]
async fn redirect_once_answers_307_to_a_path_that_accepts_the_upload() {
    let fake = start().await;
    fake.set_artifact_upload_mode(ArtifactUploadMode::RedirectOnce);
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    let url = api(&fake, &format!("jobs/{id}/artifacts"));
    let response = client()
        .post(&url)
        .query(&QUERY)
        .header("JOB-TOKEN", &token)
        .multipart(form(b"data"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 307);
    let location = header(&response, "Location").unwrap().to_owned();
    assert!(
        location.contains("/-/redirected/") && location.contains("expire_in=7d"),
        "{location}"
    );
    assert!(fake.job(id).unwrap().artifacts.is_empty());

    let response = client()
        .post(&location)
        .header("JOB-TOKEN", &token)
        .multipart(form(b"data"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        fake.job(id).unwrap().artifacts[0].expire_in.as_deref(),
        Some("7d")
    );
    let response = client()
        .post(&url)
        .header("JOB-TOKEN", &token)
        .multipart(form(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "only once");
}

#[tokio::test]
async fn rejection_mode_answers_the_given_status() {
    let fake = start().await;
    fake.set_artifact_upload_mode(ArtifactUploadMode::Reject(413));
    fake.enqueue(JobBuilder::new("build"));
    let (id, token) = take_job(&fake).await;
    let url = api(&fake, &format!("jobs/{id}/artifacts"));
    let response = client()
        .post(&url)
        .header("JOB-TOKEN", &token)
        .multipart(form(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}
