//! `[runners.cache]` and its `s3`, `gcs` and `azure` tables (keys are CamelCase, as upstream).
//!
//! Credentials are [`Secret`]s so they never reach logs. Building object URLs and talking to
//! the storage services is the cache crate's business, not this one's.

use runnel_types::Secret;

use crate::read::{read_section, section};

section! {
    /// `[runners.cache]`.
    pub struct CacheConfig {
        /// Storage type: `s3`, `gcs` or `azure`.
        "Type" => kind: Option<String>,
        /// Prefix of the object path.
        "Path" => path: Option<String>,
        /// Shares the cache between runners (no `runner/<short-token>/` path part).
        "Shared" => shared: bool,
        /// Upload size cap in bytes; 0 means no cap.
        "MaxUploadedArchiveSize" => max_uploaded_archive_size: u64,
        /// `[runners.cache.s3]`.
        "s3" => s3: Option<CacheS3Config>,
        /// `[runners.cache.gcs]`.
        "gcs" => gcs: Option<CacheGcsConfig>,
        /// `[runners.cache.azure]`.
        "azure" => azure: Option<CacheAzureConfig>,
    }
}

section! {
    /// `[runners.cache.s3]`.
    pub struct CacheS3Config {
        /// `host:port` of the S3-compatible server.
        "ServerAddress" => server_address: Option<String>,
        /// Access key ID.
        "AccessKey" => access_key: Option<String>,
        /// Secret access key.
        "SecretKey" => secret_key: Option<Secret>,
        /// Session token of temporary credentials.
        "SessionToken" => session_token: Option<Secret>,
        /// Bucket name.
        "BucketName" => bucket_name: Option<String>,
        /// Bucket region.
        "BucketLocation" => bucket_location: Option<String>,
        /// Uses plain HTTP.
        "Insecure" => insecure: bool,
        /// `access-key` or `iam`.
        "AuthenticationType" => authentication_type: Option<String>,
        /// Server-side encryption (`S3`, `KMS`, `DSSE-KMS`).
        "ServerSideEncryption" => server_side_encryption: Option<String>,
        /// KMS key for server-side encryption.
        "ServerSideEncryptionKeyID" => server_side_encryption_key_id: Option<String>,
        /// Uses dual-stack endpoints.
        "DualStack" => dual_stack: Option<bool>,
        /// Uses path-style bucket addressing.
        "PathStyle" => path_style: Option<bool>,
        /// Uses S3 Transfer Acceleration.
        "Accelerate" => accelerate: bool,
        /// Role to assume for transfers.
        "RoleARN" => role_arn: Option<String>,
        /// Role to assume for uploads.
        "UploadRoleARN" => upload_role_arn: Option<String>,
    }
}

section! {
    /// `[runners.cache.gcs]`.
    pub struct CacheGcsConfig {
        /// Service account ID.
        "AccessID" => access_id: Option<String>,
        /// Service account private key.
        "PrivateKey" => private_key: Option<Secret>,
        /// Credentials JSON file.
        "CredentialsFile" => credentials_file: Option<String>,
        /// Bucket name.
        "BucketName" => bucket_name: Option<String>,
        /// Universe domain (sovereign clouds).
        "UniverseDomain" => universe_domain: Option<String>,
    }
}

section! {
    /// `[runners.cache.azure]`.
    pub struct CacheAzureConfig {
        /// Storage account name.
        "AccountName" => account_name: Option<String>,
        /// Storage account key.
        "AccountKey" => account_key: Option<Secret>,
        /// Blob container name.
        "ContainerName" => container_name: Option<String>,
        /// Storage domain (`blob.core.windows.net`).
        "StorageDomain" => storage_domain: Option<String>,
    }
}

read_section!(CacheConfig, CacheS3Config, CacheGcsConfig, CacheAzureConfig);

impl CacheConfig {
    /// What this `[runners.cache]` asks for that Runnel cannot do and that would change where
    /// caches go or how they are protected, one message each naming the key. The official runner
    /// honours each of them, so a runner that sets one is refused at start rather than keeping
    /// its caches somewhere else (GCS, Azure), unencrypted (server-side encryption) or under
    /// other credentials (IAM, assumed roles). Settings the official runner itself falls back
    /// from (a missing `[runners.cache.s3]`, an unknown `Type`) stay per-job warnings.
    pub fn refused_keys(&self) -> Vec<String> {
        let mut refused = Vec::new();
        let kind = self.kind.as_deref().map(str::trim).unwrap_or_default();
        let service = match kind {
            "gcs" => Some("Google Cloud Storage"),
            "azure" => Some("Azure Blob Storage"),
            _ => None,
        };
        if let Some(service) = service {
            refused.push(format!(
                "[runners.cache] Type = {kind:?} (a distributed cache on {service}) is not supported by Runnel yet (only \"s3\")"
            ));
        }
        if kind != "s3" {
            return refused;
        }
        let Some(s3) = &self.s3 else {
            return refused;
        };
        let set = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.trim().is_empty());
        if s3
            .authentication_type
            .as_deref()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("iam"))
        {
            refused.push(
                "[runners.cache.s3] AuthenticationType = \"iam\" (instance-profile credentials) is not supported by Runnel yet: set AccessKey and SecretKey".to_owned(),
            );
        }
        for (key, value) in [
            ("ServerSideEncryption", &s3.server_side_encryption),
            (
                "ServerSideEncryptionKeyID",
                &s3.server_side_encryption_key_id,
            ),
        ] {
            if set(value) {
                refused.push(format!(
                    "[runners.cache.s3] {key} (server-side encryption of cache objects) is not supported by Runnel yet"
                ));
            }
        }
        for (key, value) in [
            ("RoleARN", &s3.role_arn),
            ("UploadRoleARN", &s3.upload_role_arn),
        ] {
            if set(value) {
                refused.push(format!(
                    "[runners.cache.s3] {key} (assuming an IAM role for cache transfers) is not supported by Runnel yet"
                ));
            }
        }
        refused
    }
}
