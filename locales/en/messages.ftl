# What an employee reads when something is refused or goes wrong.

## Sign-in
err-wrong-password = The username or password is incorrect.
err-wrong-code = That code is not right, or was already used. Try the next code.
err-enrol-code = That code does not match. Check the app shows idbridge and type the code it shows now.
err-passwords-differ = The two passwords differ.
err-new-passwords-differ = The two new passwords differ.
err-current-wrong = The current password is wrong.
err-not-changed = { $reason } Your password was not changed.
err-form-expired = The sign-in form expired. Please sign in again.
err-form-expired-retry = The form expired. Please try again.
err-csrf-title = This form has expired
err-csrf-message = The request did not carry this session's security token, so nothing was changed. Reload the page and try again.
err-form-too-large-title = Form too large
err-form-too-large = The form is too large.
err-locked = { $minutes ->
    [one] Too many sign-in attempts. Try again in { $minutes } minute.
   *[other] Too many sign-in attempts. Try again in { $minutes } minutes.
}
err-links-locked = { $minutes ->
    [one] Too many invalid links from your network. Try again in { $minutes } minute.
   *[other] Too many invalid links from your network. Try again in { $minutes } minutes.
}
err-crowded = Many sign-ins are being checked at once from your network. Try again in a few seconds.
err-password-refused = This password cannot be used: { $reason }.

## Password rules
policy-too-short = it must be at least { $count } characters long
policy-too-long = it must be at most { $count } characters long
policy-too-few-classes = it must mix at least { $required } of: lower-case letters, upper-case letters, digits, symbols (it has { $found })
policy-disallowed-character = it contains a character Microsoft 365 does not accept; use only ASCII letters, digits, spaces and the symbols { $symbols }
policy-contains-username = it must not contain the username
policy-reused = it was used recently; choose one not among the last { $count } passwords
rule-length = Between { $min } and { $max } characters long.
rule-classes = At least { $count } of: lower-case letters, upper-case letters, digits, symbols.
rule-characters = Only ASCII letters, digits, spaces and the symbols { $symbols }
rule-no-username = It must not contain your username.
rule-history = It must not be one of your last { $count } passwords.
rule-expiry = It expires { $days } days after you set it.

## Refused sign-ins
refusal-not-bound-title = Your account is not set up for this application
refusal-not-bound-message = Your account is not connected to { $sp }, so idbridge cannot sign you in there.
refusal-not-bound-hint = Ask { $contact } to bind your account to Microsoft 365 in idbridge.
refusal-suspended-title = Your account is suspended
refusal-suspended-message = Sign-in is blocked while your account is suspended.
refusal-suspended-hint = Ask { $contact } to re-activate your account.
refusal-expired-title = Your password has expired
refusal-expired-message = Your password has expired under your organisation's password policy.
refusal-expired-hint = Ask { $contact } to reset your password.
refusal-expired-hint-reset = Choose a new password with “Forgot your password?” on the sign-in page, or ask { $contact }.

## Password-reset links
link-unknown = This password-reset link is not valid. Check that you opened the whole link from the email.
link-expired = This password-reset link has expired.
link-used = This password-reset link was already used. Each link works once.
link-superseded = This password-reset link no longer works because your password was changed after it was sent.
link-suspended = Your account is suspended, so its password cannot be reset.
reset-requests-locked = { $minutes ->
    [one] Too many password-reset requests. Try again in { $minutes } minute.
   *[other] Too many password-reset requests. Try again in { $minutes } minutes.
}

## Requests that cannot be used
sso-rejected-title = This sign-in request cannot be used
sso-rejected-sign-out-title = This sign-out request cannot be used
sso-rejected-expired = This sign-in page has expired or was opened in another browser. Start the sign-in again from the application.
sso-rejected-replayed = This sign-in request was already used. Start the sign-in again from the application.
sso-rejected-clock = This sign-in request is too old, or the clocks of the application and idbridge differ. Start the sign-in again from the application.
sso-rejected-other = The application sent a request idbridge cannot answer. Details for your IT administrator: { $detail }
sso-start-title = Start from Microsoft 365
sso-start-message = This page is where Microsoft 365 sends you to sign in, and it was opened without a sign-in request. Go to https://www.office.com and sign in with your work email: you come back here by yourself. To manage your account (password, sign-in methods), open { $portal }.

## Error pages
err-bad-request-hint = Go back to the application you were signing in to and try again. If this keeps happening, tell your IT administrator.
err-not-found-title = Not found
err-not-found-message = There is no page at this address.
err-busy-title = Too many sign-ins right now
err-busy-message = idbridge is checking many passwords at once and could not take yours.
err-busy-hint = Wait a few seconds and try again.
err-internal-title = Something went wrong
err-internal-message = idbridge could not complete this request.
err-internal-hint = Try again in a moment. If it keeps failing, give your IT administrator this reference.
err-wrong-passwords-locked = { $minutes ->
    [one] Too many wrong passwords. Try again in { $minutes } minute.
   *[other] Too many wrong passwords. Try again in { $minutes } minutes.
}
