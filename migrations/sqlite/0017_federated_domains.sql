-- The domains idbridge federated through Microsoft Graph, with the issuer and sign-in URL it
-- gave each: Entra wants a distinct issuer per federated domain, and a Response's issuer must
-- be the one of the user's UPN domain. A domain federated by hand is not here (it uses
-- saml.issuer or saml.domain_issuers).
CREATE TABLE federated_domains (
    domain TEXT PRIMARY KEY,
    issuer_uri TEXT NOT NULL UNIQUE,
    passive_sign_in_uri TEXT NOT NULL,
    federated_at INTEGER NOT NULL
);
