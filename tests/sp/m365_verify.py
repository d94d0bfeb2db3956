#!/usr/bin/env python3
"""Validates a SAMLResponse that a browser test captured, as Microsoft 365 (Entra ID) would.

The browser tests (tests/browser/passkey_flows.mjs) sign in through idbridge in Chromium and
catch the Response on its way to Microsoft's ACS; this checks it with the same pysaml2 set-up as
m365_sp.py: the signature against the IdP metadata certificate, audience, InResponseTo,
Destination and time conditions, and a tampered copy must be refused.

Usage:
    m365_verify.py BASE_URL REQUEST_ID RESPONSE_FILE

Prints one JSON object: {"name_id", "issuer", "in_response_to", "authn_context_class_ref",
"authn_instant"}. Exits non-zero with a message on stderr on any failure.
"""

import atexit
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import m365_sp as sp  # noqa: E402  (the shared SP set-up; exits 3 when pysaml2 is missing)


def main():
    if len(sys.argv) != 4:
        sp.fail(f"usage: {sys.argv[0]} BASE_URL REQUEST_ID RESPONSE_FILE")
    base, request_id, response_file = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    if shutil.which("xmlsec1") is None:
        sys.stderr.write(f"m365_verify.py: the xmlsec1 binary is not on PATH; {sp.INSTALL_HINT}\n")
        sys.exit(3)
    r = sp.requests.get(f"{base}/saml/metadata", timeout=30)
    if r.status_code != 200:
        sp.fail(f"GET /saml/metadata answered {r.status_code}")
    workdir = tempfile.mkdtemp(prefix="m365_verify_")
    atexit.register(shutil.rmtree, workdir, True)
    metadata_path = os.path.join(workdir, "idp-metadata.xml")
    with open(metadata_path, "wb") as f:
        f.write(r.content)
    with open(response_file, encoding="ascii") as f:
        saml_response = f.read().strip()
    client = sp.sp_client(metadata_path)
    try:
        result = client.parse_authn_request_response(
            saml_response, sp.BINDING_HTTP_POST, outstanding={request_id: "/"}
        )
    except Exception as exc:  # pysaml2 raises many types; all are a failed validation
        sp.fail(f"pysaml2 rejected the SAMLResponse: {type(exc).__name__}: {exc}")
    if result is None or result.assertion is None:
        sp.fail("pysaml2 returned no validated assertion")
    assertion = result.assertion
    if assertion.signature is None:
        sp.fail("the assertion is not signed")
    sp.must_reject(metadata_path, "tampered", sp.tamper(saml_response), {request_id: "/"})
    statements = assertion.authn_statement or []
    print(
        json.dumps(
            {
                "name_id": assertion.subject.name_id.text,
                "issuer": assertion.issuer.text,
                "in_response_to": result.in_response_to,
                "authn_context_class_ref": [
                    s.authn_context.authn_context_class_ref.text for s in statements
                ],
                "authn_instant": [s.authn_instant for s in statements],
            }
        )
    )


if __name__ == "__main__":
    main()
