"""Object storage: an S3 client on aiohttp (`s3`), its SigV4 signing (`sigv4`), `s3://` URIs (`uri`),
multipart uploads with bounded memory (`upload`) and the order a job's outputs are published in (`publish`)."""
