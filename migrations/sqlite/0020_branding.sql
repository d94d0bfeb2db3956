-- The organisation's branding of the employee pages (sign-in, portal): one row shared by
-- every node. The logo is base64 (TEXT, portable), at most 128 KiB before encoding.
CREATE TABLE branding (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    organisation_name TEXT NOT NULL,
    accent_colour TEXT NOT NULL,
    logo_type TEXT CHECK (logo_type IN ('image/png', 'image/svg+xml')),
    logo_base64 TEXT,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
