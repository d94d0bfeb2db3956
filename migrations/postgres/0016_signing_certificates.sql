-- The signing certificates of a rollover, shared by every node: the next one (published, not
-- yet signing), the current one once a rollover promoted it (it then takes precedence over
-- certs.key_file/cert_file), and the previous one (still trusted by Microsoft until retired;
-- its key is no longer kept). Keys are sealed with the data key (token.key), never plain.
CREATE TABLE signing_certificates (
    role TEXT PRIMARY KEY CHECK (role IN ('next', 'current', 'previous')),
    key_sealed TEXT,
    cert_pem TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
