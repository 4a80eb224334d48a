//! The job log: masking, size limit, checksum, and the byte buffer the uploader reads.
