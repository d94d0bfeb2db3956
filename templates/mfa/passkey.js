// idbridge passkeys: runs the WebAuthn ceremonies behind the passkey buttons.
//
// Served from /mfa/passkey.js (pages allow scripts from 'self' only, no inline script). The
// server speaks the JSON of webauthn-rs, where binary values are base64url strings; the
// browser's WebAuthn API wants ArrayBuffers, so this script converts both ways.
(() => {
  'use strict';

  function toBuffer(text) {
    const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function toText(buffer) {
    const bytes = new Uint8Array(buffer);
    let binary = '';
    for (let i = 0; i < bytes.length; i += 1) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  // Same-origin JSON posts: the server refuses other content types and other origins (CSRF).
  async function post(path, body) {
    const response = await fetch(path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body || {}),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = (data.error && data.error.message) || `idbridge answered ${response.status}`;
      const error = new Error(message);
      error.code = data.error && data.error.code;
      throw error;
    }
    return data;
  }

  function creationOptions(options) {
    const key = options.publicKey;
    key.challenge = toBuffer(key.challenge);
    key.user.id = toBuffer(key.user.id);
    (key.excludeCredentials || []).forEach((c) => { c.id = toBuffer(c.id); });
    return { publicKey: key };
  }

  function requestOptions(options) {
    const key = options.publicKey;
    key.challenge = toBuffer(key.challenge);
    (key.allowCredentials || []).forEach((c) => { c.id = toBuffer(c.id); });
    return { publicKey: key };
  }

  function registrationJSON(credential) {
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: toText(credential.response.attestationObject),
        clientDataJSON: toText(credential.response.clientDataJSON),
      },
      extensions: credential.getClientExtensionResults(),
    };
  }

  function assertionJSON(credential) {
    const r = credential.response;
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: toText(r.authenticatorData),
        clientDataJSON: toText(r.clientDataJSON),
        signature: toText(r.signature),
        userHandle: r.userHandle ? toText(r.userHandle) : null,
      },
      extensions: credential.getClientExtensionResults(),
    };
  }

  function say(root, text, isError) {
    const status = root.querySelector('[data-passkey-status]') || document.querySelector('[data-passkey-status]');
    if (!status) return;
    status.textContent = text;
    status.hidden = !text;
    status.className = isError ? 'error' : 'hint';
  }

  // What to say, in the page's language: the page writes it into data-passkey-texts.
  function text(name) {
    const texts = document.querySelector('[data-passkey-texts]');
    return (texts && texts.dataset[name]) || '';
  }

  function explain(err) {
    // The browser's own refusals (the user cancelled, or no matching passkey) carry a name.
    if (err && err.name === 'NotAllowedError') return text('cancelled');
    if (err && err.name === 'InvalidStateError') return text('registered');
    return (err && err.message) || text('failed');
  }

  // The sign-in goes on where a form would have taken it: the next step of the flow.
  function continueSignIn(next, pending) {
    const form = document.createElement('form');
    form.method = 'post';
    form.action = next;
    const field = document.createElement('input');
    field.type = 'hidden';
    field.name = 'pending';
    field.value = pending;
    form.appendChild(field);
    document.body.appendChild(form);
    form.submit();
  }

  // Adds a passkey: for the signed-in user, or (with data-pending) as the enrolment step of a
  // sign-in, which then goes on.
  async function register(form) {
    const label = form.querySelector('input[name=label]').value.trim();
    if (!label) {
      say(form, text('nameFirst'), true);
      return;
    }
    const pending = form.dataset.pending || undefined;
    say(form, text('follow'), false);
    const { ceremony, options } = await post('/mfa/passkeys/register/start', { pending });
    const credential = await navigator.credentials.create(creationOptions(options));
    const { next } = await post('/mfa/passkeys/register/finish', {
      pending, ceremony, label, credential: registrationJSON(credential),
    });
    if (next && pending) {
      continueSignIn(next, pending);
    } else {
      window.location.reload();
    }
  }

  async function signIn(button) {
    const pending = button.dataset.pending;
    say(document, text('follow'), false);
    const { ceremony, options } = await post('/mfa/passkeys/authenticate/start', { pending });
    const credential = await navigator.credentials.get(requestOptions(options));
    const { next } = await post('/mfa/passkeys/authenticate/finish', {
      pending, ceremony, credential: assertionJSON(credential),
    });
    continueSignIn(next, pending);
  }

  async function remove(button) {
    await post(`/mfa/passkeys/${encodeURIComponent(button.dataset.passkeyDelete)}/delete`, {});
    window.location.reload();
  }

  function guard(root, task) {
    return task().catch((err) => say(root, explain(err), true));
  }

  document.addEventListener('DOMContentLoaded', () => {
    const supported = typeof window.PublicKeyCredential === 'function';
    document.querySelectorAll('form[data-passkey=register]').forEach((form) => {
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        if (!supported) { say(form, text('unsupported'), true); return; }
        guard(form, () => register(form));
      });
    });
    document.querySelectorAll('[data-passkey-sign-in]').forEach((button) => {
      if (!supported) { button.hidden = true; return; }
      button.addEventListener('click', (event) => {
        event.preventDefault();
        guard(document, () => signIn(button));
      });
    });
    document.querySelectorAll('[data-passkey-delete]').forEach((button) => {
      button.addEventListener('click', (event) => {
        event.preventDefault();
        guard(document, () => remove(button));
      });
    });
  });
})();
