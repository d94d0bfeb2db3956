#!/usr/bin/env python3
"""A stand-in for Microsoft 365 (Entra ID) as a SAML 2.0 service provider.

It drives idbridge's browser flow over HTTP exactly as Microsoft does (HTTP-POST
AuthnRequest without AssertionConsumerServiceURL, unsigned, persistent NameIDPolicy),
then has pysaml2 -- configured like Microsoft's side of a federated domain -- validate
the SAMLResponse: signature with xmlsec1 against the IdP metadata certificate, audience,
InResponseTo, Destination, time conditions.

Usage:
    m365_sp.py BASE_URL USERNAME PASSWORD [--relay-state RS] [--expect-status N]

On success prints one JSON object on stdout:
    {"name_id", "name_id_format", "idp_email", "issuer", "in_response_to",
     "request_id", "relay_state", "acs"}
With --expect-status other than 200, it checks the login answer has that status and
carries no SAMLResponse, then prints {"status", "request_id", "body"}.
Exits non-zero with a message on stderr on any failure.

Requirements: python3, `pip install pysaml2 lxml` (pulls in requests), and the
xmlsec1 binary (Debian/Ubuntu: `apt-get install xmlsec1`).
"""

import argparse
import base64
import datetime
import json
import hashlib
import hmac
import struct
import time
import os
import shutil
import sys
import tempfile
import atexit
import uuid
from html.parser import HTMLParser
from urllib.parse import urljoin

INSTALL_HINT = (
    "install the SP test dependencies: `pip install pysaml2 lxml` "
    "and the xmlsec1 binary (`apt-get install xmlsec1`)"
)

try:
    import requests
    from saml2 import BINDING_HTTP_POST
    from saml2.client import Saml2Client
    from saml2.config import SPConfig
    from saml2.saml import NAMEID_FORMAT_PERSISTENT
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(f"m365_sp.py: missing Python module ({exc}); {INSTALL_HINT}\n")
    sys.exit(3)

ENTITY_ID = "urn:federation:MicrosoftOnline"
ACS = "https://login.microsoftonline.com/login.srf"
NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"


def fail(message):
    sys.stderr.write(f"m365_sp.py: FAIL: {message}\n")
    sys.exit(1)


class FormParser(HTMLParser):
    """Collects every form of a page: action, method and all input name/value pairs."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms = []
        self._current = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self._current = {
                "action": attrs.get("action") or "",
                "method": (attrs.get("method") or "get").lower(),
                "inputs": {},
            }
            self.forms.append(self._current)
        elif tag in ("input", "button", "textarea", "select") and self._current is not None:
            name = attrs.get("name")
            if name:
                self._current["inputs"][name] = attrs.get("value") or ""

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None


def forms_of(html):
    parser = FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


MULTIPLE_AUTHN = "http://schemas.microsoft.com/claims/multipleauthn"


def totp_code(secret_base32, at=None):
    """RFC 6238 TOTP (SHA-1, 6 digits, 30 s), computed independently of idbridge."""
    key = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    counter = int((time.time() if at is None else at) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{value:06d}"


def microsoft_authn_request(request_id, request_mfa=False):
    """The AuthnRequest as Entra ID sends it (see Microsoft's SAML 2.0 IdP documentation);
    with `request_mfa`, the RequestedAuthnContext Entra adds when it needs MFA from a
    federated IdP (federatedIdpMfaBehavior = enforceMfaByFederatedIdp)."""
    instant = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return (
        f'<samlp:AuthnRequest ID="{request_id}" Version="2.0" IssueInstant="{instant}" '
        'xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">'
        f'<Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">{ENTITY_ID}</Issuer>'
        '<samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"/>'
        + (
            '<samlp:RequestedAuthnContext Comparison="minimum">'
            f'<AuthnContextClassRef xmlns="urn:oasis:names:tc:SAML:2.0:assertion">{MULTIPLE_AUTHN}</AuthnContextClassRef>'
            "</samlp:RequestedAuthnContext>"
            if request_mfa
            else ""
        )
        + "</samlp:AuthnRequest>"
    )


def sp_client(metadata_path, acs=ACS):
    config = SPConfig()
    config.load(
        {
            "entityid": ENTITY_ID,
            "metadata": {"local": [metadata_path]},
            "xmlsec_binary": shutil.which("xmlsec1"),
            "allow_unknown_attributes": True,
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(acs, BINDING_HTTP_POST)]},
                    "want_assertions_signed": True,
                    "want_response_signed": False,
                    "allow_unsolicited": False,
                    "authn_requests_signed": False,
                    "name_id_format": NAMEID_FORMAT_PERSISTENT,
                    "allow_unknown_attributes": True,
                }
            },
        }
    )
    return Saml2Client(config)


def tamper(saml_response_b64):
    """Changes one character of the signed NameID."""
    xml = base64.b64decode(saml_response_b64).decode()
    start = xml.index("<saml:NameID")
    start = xml.index(">", start) + 1
    original = xml[start]
    changed = "B" if original != "B" else "C"
    tampered = xml[:start] + changed + xml[start + 1 :]
    return base64.b64encode(tampered.encode()).decode()


def must_reject(metadata_path, label, saml_response_b64, outstanding, acs=ACS):
    client = sp_client(metadata_path, acs)
    try:
        result = client.parse_authn_request_response(
            saml_response_b64, BINDING_HTTP_POST, outstanding=outstanding
        )
    except Exception:
        return
    if result is not None and result.assertion is not None:
        fail(f"pysaml2 accepted a {label} response, so its validation is not effective")


NS_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"


def trusting(metadata, certificates):
    """The IdP metadata with its signing keys replaced by `certificates`: what Microsoft
    trusts is what its federation settings hold, not what the IdP publishes."""
    from lxml import etree

    root = etree.fromstring(metadata)
    idp = root.find(f"{{{NS_MD}}}IDPSSODescriptor")
    for descriptor in idp.findall(f"{{{NS_MD}}}KeyDescriptor"):
        idp.remove(descriptor)
    for position, certificate in enumerate(certificates):
        descriptor = etree.Element(f"{{{NS_MD}}}KeyDescriptor", use="signing")
        key_info = etree.SubElement(descriptor, f"{{{NS_DS}}}KeyInfo")
        data = etree.SubElement(key_info, f"{{{NS_DS}}}X509Data")
        etree.SubElement(data, f"{{{NS_DS}}}X509Certificate").text = certificate
        idp.insert(position, descriptor)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("username")
    parser.add_argument("password")
    parser.add_argument("--relay-state", default="https://portal.office.com/?a=1&b=<2>")
    parser.add_argument("--expect-status", type=int, default=200)
    parser.add_argument("--totp-secret", help="answer the second-factor page with this TOTP secret (base32)")
    parser.add_argument("--request-mfa", action="store_true", help="ask for multipleauthn")
    parser.add_argument(
        "--domain",
        help="a domain federated with its own issuer: its metadata (/saml/metadata/DOMAIN) and "
        "sign-in URL (/saml/sso/DOMAIN), as Microsoft holds them for that domain",
    )
    parser.add_argument(
        "--acs",
        default=ACS,
        help="Microsoft's login.srf as idbridge is configured to post to (m365.login_base_url)",
    )
    parser.add_argument(
        "--trust-cert",
        action="append",
        help="a certificate (base64 DER) Microsoft holds for the domain (signingCertificate, "
        "nextSigningCertificate); given, only these are trusted, not the metadata's",
    )
    args = parser.parse_args()

    if shutil.which("xmlsec1") is None:
        sys.stderr.write(f"m365_sp.py: the xmlsec1 binary is not on PATH; {INSTALL_HINT}\n")
        sys.exit(3)

    base = args.base_url.rstrip("/")
    http = requests.Session()

    # 1. The IdP metadata, as an admin would download it for the federation settings.
    suffix = f"/{args.domain}" if args.domain else ""
    r = http.get(f"{base}/saml/metadata{suffix}", timeout=30)
    if r.status_code != 200:
        fail(f"GET /saml/metadata answered {r.status_code}")
    workdir = tempfile.mkdtemp(prefix="m365_sp_")
    # pysaml2 reads the metadata from a file; remove it however the run ends.
    atexit.register(shutil.rmtree, workdir, True)
    metadata_path = os.path.join(workdir, "idp-metadata.xml")
    with open(metadata_path, "wb") as f:
        f.write(trusting(r.content, args.trust_cert) if args.trust_cert else r.content)
    client = sp_client(metadata_path, args.acs)

    # 2. The browser arrives with Microsoft's AuthnRequest (HTTP-POST binding).
    request_id = "_" + str(uuid.uuid4())
    saml_request = base64.b64encode(microsoft_authn_request(request_id, args.request_mfa).encode()).decode()
    r = http.post(
        f"{base}/saml/sso{suffix}",
        data={"SAMLRequest": saml_request, "RelayState": args.relay_state},
        allow_redirects=False,
        timeout=30,
    )
    if r.status_code != 200:
        fail(f"POST /saml/sso{suffix} answered {r.status_code}: {r.text[:500]}")
    login_forms = [f for f in forms_of(r.text) if "password" in f["inputs"]]
    if len(login_forms) != 1:
        fail(f"expected one login form with a password field, found {len(login_forms)}: {r.text[:500]}")
    login = login_forms[0]

    # 3. The user fills in the form.
    fields = dict(login["inputs"])
    fields["username"] = args.username
    fields["password"] = args.password
    r = http.post(urljoin(r.url, login["action"]), data=fields, allow_redirects=False, timeout=30)
    if args.totp_secret:
        code_forms = [f for f in forms_of(r.text) if "code" in f["inputs"]]
        if r.status_code != 200 or len(code_forms) != 1:
            fail(f"expected the second-factor form after the password, got {r.status_code}: {r.text[:500]}")
        fields = dict(code_forms[0]["inputs"])
        fields["code"] = totp_code(args.totp_secret)
        r = http.post(urljoin(r.url, code_forms[0]["action"]), data=fields, allow_redirects=False, timeout=30)
    if r.status_code != args.expect_status:
        fail(f"login answered {r.status_code}, expected {args.expect_status}: {r.text[:500]}")
    posts = [f for f in forms_of(r.text) if "SAMLResponse" in f["inputs"]]
    if args.expect_status != 200:
        if posts:
            fail("a refused or failed login page carries a SAMLResponse")
        print(json.dumps({"status": r.status_code, "request_id": request_id, "body": r.text}))
        return
    if len(posts) != 1:
        fail(f"expected one auto-post form with a SAMLResponse, found {len(posts)}: {r.text[:500]}")
    post = posts[0]
    if post["method"] != "post":
        fail(f"the response form uses method {post['method']!r}, not post")

    # 4. Microsoft's ACS validates the response.
    try:
        result = client.parse_authn_request_response(
            post["inputs"]["SAMLResponse"],
            BINDING_HTTP_POST,
            outstanding={request_id: "/"},
        )
    except Exception as exc:  # pysaml2 raises many types; all are a failed validation
        fail(f"pysaml2 rejected the SAMLResponse: {type(exc).__name__}: {exc}")
    if result is None:
        fail("pysaml2 returned no result for the SAMLResponse")
    assertion = result.assertion
    if assertion is None:
        fail("pysaml2 returned no validated assertion (its reason is logged above)")
    if not result.response.assertion or assertion.signature is None:
        fail("the assertion is not signed")

    # 5. Negative controls: the same validator must refuse a tampered or unsolicited
    #    response, otherwise its "accepted" above proves nothing.
    must_reject(metadata_path, "tampered", tamper(post["inputs"]["SAMLResponse"]), {request_id: "/"}, args.acs)
    must_reject(metadata_path, "unsolicited", post["inputs"]["SAMLResponse"], {}, args.acs)

    name_id = assertion.subject.name_id
    idp_email = []
    for statement in assertion.attribute_statement or []:
        for attribute in statement.attribute:
            if attribute.name == "IDPEmail":
                idp_email.extend(v.text for v in attribute.attribute_value)
    ava_email = result.ava.get("IDPEmail") if result.ava else None
    if ava_email is not None and list(ava_email) != idp_email:
        fail(f"pysaml2's attribute view {ava_email} differs from the assertion {idp_email}")

    print(
        json.dumps(
            {
                "name_id": name_id.text,
                "name_id_format": name_id.format,
                "idp_email": idp_email,
                "issuer": assertion.issuer.text,
                "response_issuer": result.response.issuer.text if result.response.issuer else None,
                "in_response_to": result.in_response_to,
                "request_id": request_id,
                "relay_state": post["inputs"].get("RelayState"),
                "acs": post["action"],
                "audience": [
                    a.text
                    for c in [assertion.conditions]
                    for r_ in c.audience_restriction
                    for a in r_.audience
                ],
                "session_index": [s.session_index for s in assertion.authn_statement],
                "authn_context_class_ref": [
                    s.authn_context.authn_context_class_ref.text for s in assertion.authn_statement
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
