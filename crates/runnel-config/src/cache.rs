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
