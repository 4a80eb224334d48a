//! Artifact upload and download.

use runnel_api::{ArtifactDownload, ArtifactUpload};
use runnel_types::{ArtifactFormat, JobId, JobToken};

use crate::support::{Reply, TestServer};

fn archive(content: &[u8]) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), content).unwrap();
    file
}

fn upload<'a>(token: &'a JobToken, file: &'a tempfile::NamedTempFile) -> ArtifactUpload<'a> {
    ArtifactUpload {
        job_id: JobId(5),
        token,
        path: file.path(),
        name: "",
        format: None,
        artifact_type: "",
        expire_in: "",
    }
}

#[tokio::test]
async fn upload_streams_one_multipart_file_part() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201));
    let token = JobToken::new("glcbt-job");
    let file = archive(b"zip bytes");
    server
        .client()
        .upload_artifacts(&upload(&token, &file))
        .await
        .unwrap();

    let request = server.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/v4/jobs/5/artifacts");
    assert_eq!(request.query, None, "empty parameters are not sent");
    assert_eq!(request.header("job-token"), Some("glcbt-job"));
    assert_eq!(request.header("transfer-encoding"), Some("chunked"));
    assert_eq!(request.header("content-length"), None);
    let content_type = request.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("{content_type}"));
    let body = String::from_utf8_lossy(&request.body).replace(boundary, "[BOUNDARY]");
    insta::assert_snapshot!(body.replace("\r\n", "\n"), @r#"
    --[BOUNDARY]
    Content-Disposition: form-data; name="file"; filename="artifacts.zip"
    content-type: application/octet-stream

    zip bytes
    --[BOUNDARY]--
    "#);
}

#[tokio::test]
async fn upload_sends_non_empty_parameters_and_names_the_part_by_format() {
    let server = TestServer::start().await;
    server.reply(Reply::status(201));
    let token = JobToken::new("glcbt-job");
    let file = archive(b"junit");
    let request = ArtifactUpload {
        name: "reports/junit",
        format: Some(ArtifactFormat::Gzip),
        artifact_type: "junit",
        expire_in: "1 week",
        ..upload(&token, &file)
    };
    server.client().upload_artifacts(&request).await.unwrap();
    let recorded = server.only_request();
    assert_eq!(
        recorded.query.as_deref(),
        Some("expire_in=1+week&artifact_format=gzip&artifact_type=junit")
    );
    let body = String::from_utf8_lossy(&recorded.body);
    assert!(body.contains(r#"filename="junit.gz""#), "{body}");
}

#[tokio::test]
async fn upload_follows_a_307_and_resends_the_body() {
    let target = TestServer::start().await;
    target.reply(Reply::status(201));
    let origin = TestServer::start().await;
    origin.reply(Reply::status(307).header(
        "Location",
        &format!("{}/api/v4/jobs/5/artifacts?x=1", target.url()),
    ));
    let token = JobToken::new("glcbt-job");
    let file = archive(b"payload");
    origin
        .client()
        .upload_artifacts(&upload(&token, &file))
        .await
        .unwrap();

    let redirected = target.only_request();
    assert_eq!(redirected.query.as_deref(), Some("x=1"));
    assert_eq!(
        redirected.header("job-token"),
        Some("glcbt-job"),
        "another GitLab host"
    );
    assert!(String::from_utf8_lossy(&redirected.body).contains("payload"));
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn upload_failures_are_not_retried() {
    for status in [403_u16, 413] {
        let server = TestServer::start().await;
        server
            .reply(Reply::status(status))
            .reply(Reply::status(201));
        let token = JobToken::new("glcbt-job");
        let file = archive(b"x");
        let error = server
            .client()
            .upload_artifacts(&upload(&token, &file))
            .await
            .unwrap_err();
        assert_eq!(error.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn upload_of_a_missing_file_names_it() {
    let server = TestServer::start().await;
    let token = JobToken::new("glcbt-job");
    let file = archive(b"x");
    let missing = file.path().with_extension("missing");
    let request = ArtifactUpload {
        path: &missing,
        ..upload(&token, &file)
    };
    let error = server
        .client()
        .upload_artifacts(&request)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(
        message.starts_with("failed to open artifacts file"),
        "{message}"
    );
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn download_follows_a_302_to_storage_without_the_job_token() {
    let storage = TestServer::start().await;
    storage.reply(Reply::status(200).body(b"artifact archive bytes"));
    let gitlab = TestServer::start().await;
    gitlab.reply(Reply::status(302).header(
        "Location",
        &format!("{}/bucket/a.zip?X-Amz-Signature=s3cr3t", storage.url()),
    ));
    let token = JobToken::new("glcbt-dependency");
    let mut out = Vec::new();
    let written = gitlab
        .client()
        .download_artifacts(
            &ArtifactDownload {
                job_id: JobId(9),
                token: &token,
                direct_download: true,
            },
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(out, b"artifact archive bytes");
    assert_eq!(written, out.len() as u64);

    let first = gitlab.only_request();
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, "/api/v4/jobs/9/artifacts");
    assert_eq!(first.query.as_deref(), Some("direct_download=true"));
    assert_eq!(first.header("job-token"), Some("glcbt-dependency"));
    let second = storage.only_request();
    assert_eq!(second.path, "/bucket/a.zip");
    assert_eq!(
        second.header("job-token"),
        None,
        "the token stays with GitLab"
    );
}

#[tokio::test]
async fn download_to_a_file_and_failures_leave_no_file() {
    let server = TestServer::start().await;
    server
        .reply(Reply::status(200).body(b"zip"))
        .reply(Reply::status(404))
        .reply(Reply::status(200));
    let token = JobToken::new("glcbt-dependency");
    let download = ArtifactDownload {
        job_id: JobId(9),
        token: &token,
        direct_download: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("artifacts.zip");
    let client = server.client();
    assert_eq!(
        client
            .download_artifacts_to_file(&download, &path)
            .await
            .unwrap(),
        3
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"zip");

    let failed = dir.path().join("missing.zip");
    let error = client
        .download_artifacts_to_file(&download, &failed)
        .await
        .unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(404));
    assert!(!failed.exists());
    assert_eq!(server.requests().len(), 2, "404 is not retried");
    assert_eq!(server.requests()[0].query, None);
}

#[tokio::test]
async fn a_redirect_loop_ends() {
    let server = TestServer::start().await;
    for _ in 0..20 {
        server.reply(Reply::status(302).header("Location", "/api/v4/jobs/9/artifacts"));
    }
    let token = JobToken::new("glcbt-dependency");
    let error = server
        .client()
        .download_artifacts(
            &ArtifactDownload {
                job_id: JobId(9),
                token: &token,
                direct_download: false,
            },
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("too many redirects for GET"),
        "{error}"
    );
    assert_eq!(server.requests().len(), 11);
}
