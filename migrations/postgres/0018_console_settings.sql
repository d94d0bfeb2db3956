-- Settings an admin enters in the console or the API instead of idbridge.toml. Values set in
-- the file or the environment take precedence over these and are never copied here.

-- The Microsoft 365 app registration (one row). The client secret and the private key of a
-- certificate credential are sealed with the data key (token.key), never stored plain.
CREATE TABLE m365_app_registration (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tenant TEXT,
    client_id TEXT,
    client_secret_sealed TEXT,
    certificate_pem TEXT,
    key_sealed TEXT,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

-- SAML service providers registered in the console or the API, besides Microsoft 365 and
-- those of idbridge.toml. acs_urls is a JSON array (the first is the default), attributes a
-- JSON object (SAML attribute name to user attribute).
CREATE TABLE saml_service_providers (
    entity_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    acs_urls TEXT NOT NULL,
    slo_url TEXT,
    name_id TEXT NOT NULL CHECK (name_id IN ('username', 'email', 'immutable_id')),
    attributes TEXT NOT NULL,
    require_m365_binding INTEGER NOT NULL,
    certificate_pem TEXT,
    want_authn_requests_signed INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
