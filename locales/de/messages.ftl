# Was Beschäftigte lesen, wenn etwas abgelehnt wird oder schiefgeht.

## Anmeldung
err-wrong-password = Benutzername oder Passwort ist falsch.
err-wrong-code = Dieser Code stimmt nicht oder wurde schon verwendet. Versuchen Sie den nächsten Code.
err-enrol-code = Dieser Code passt nicht. Prüfen Sie, dass die App idbridge anzeigt, und geben Sie den Code ein, den sie jetzt zeigt.
err-passwords-differ = Die beiden Passwörter sind verschieden.
err-new-passwords-differ = Die beiden neuen Passwörter sind verschieden.
err-current-wrong = Das aktuelle Passwort ist falsch.
err-not-changed = { $reason } Ihr Passwort wurde nicht geändert.
err-form-expired = Das Anmeldeformular ist abgelaufen. Bitte melden Sie sich erneut an.
err-form-expired-retry = Das Formular ist abgelaufen. Bitte versuchen Sie es erneut.
err-csrf-title = Dieses Formular ist abgelaufen
err-csrf-message = Die Anfrage enthielt nicht das Sicherheitstoken dieser Sitzung, daher wurde nichts geändert. Laden Sie die Seite neu und versuchen Sie es erneut.
err-form-too-large-title = Formular zu groß
err-form-too-large = Das Formular ist zu groß.
err-locked = { $minutes ->
    [one] Zu viele Anmeldeversuche. Versuchen Sie es in { $minutes } Minute erneut.
   *[other] Zu viele Anmeldeversuche. Versuchen Sie es in { $minutes } Minuten erneut.
}
err-links-locked = { $minutes ->
    [one] Zu viele ungültige Links aus Ihrem Netzwerk. Versuchen Sie es in { $minutes } Minute erneut.
   *[other] Zu viele ungültige Links aus Ihrem Netzwerk. Versuchen Sie es in { $minutes } Minuten erneut.
}
err-crowded = Aus Ihrem Netzwerk werden gerade viele Anmeldungen gleichzeitig geprüft. Versuchen Sie es in ein paar Sekunden erneut.
err-password-refused = Dieses Passwort kann nicht verwendet werden: { $reason }.

## Passwortregeln
policy-too-short = es muss mindestens { $count } Zeichen lang sein
policy-too-long = es darf höchstens { $count } Zeichen lang sein
policy-too-few-classes = es muss mindestens { $required } der folgenden mischen: Kleinbuchstaben, Großbuchstaben, Ziffern, Sonderzeichen (es hat { $found })
policy-disallowed-character = es enthält ein Zeichen, das Microsoft 365 nicht akzeptiert; verwenden Sie nur ASCII-Buchstaben, Ziffern, Leerzeichen und die Sonderzeichen { $symbols }
policy-contains-username = es darf den Benutzernamen nicht enthalten
policy-reused = es wurde kürzlich verwendet; wählen Sie eines, das nicht unter den letzten { $count } Passwörtern ist
rule-length = Zwischen { $min } und { $max } Zeichen lang.
rule-classes = Mindestens { $count } der folgenden: Kleinbuchstaben, Großbuchstaben, Ziffern, Sonderzeichen.
rule-characters = Nur ASCII-Buchstaben, Ziffern, Leerzeichen und die Sonderzeichen { $symbols }
rule-no-username = Es darf Ihren Benutzernamen nicht enthalten.
rule-history = Es darf keines Ihrer letzten { $count } Passwörter sein.
rule-expiry = Es läuft { $days } Tage nach dem Setzen ab.

## Abgelehnte Anmeldungen
refusal-not-bound-title = Ihr Konto ist für diese Anwendung nicht eingerichtet
refusal-not-bound-message = Ihr Konto ist nicht mit { $sp } verbunden, daher kann idbridge Sie dort nicht anmelden.
refusal-not-bound-hint = Bitten Sie { $contact }, Ihr Konto in idbridge mit Microsoft 365 zu verbinden.
refusal-suspended-title = Ihr Konto ist gesperrt
refusal-suspended-message = Die Anmeldung ist blockiert, solange Ihr Konto gesperrt ist.
refusal-suspended-hint = Bitten Sie { $contact }, Ihr Konto wieder zu aktivieren.
refusal-expired-title = Ihr Passwort ist abgelaufen
refusal-expired-message = Ihr Passwort ist nach der Passwortrichtlinie Ihrer Organisation abgelaufen.
refusal-expired-hint = Bitten Sie { $contact }, Ihr Passwort zurückzusetzen.
refusal-expired-hint-reset = Wählen Sie mit „Passwort vergessen?“ auf der Anmeldeseite ein neues Passwort oder fragen Sie { $contact }.

## Links zum Zurücksetzen des Passworts
link-unknown = Dieser Link zum Zurücksetzen des Passworts ist ungültig. Prüfen Sie, dass Sie den ganzen Link aus der E-Mail geöffnet haben.
link-expired = Dieser Link zum Zurücksetzen des Passworts ist abgelaufen.
link-used = Dieser Link zum Zurücksetzen des Passworts wurde bereits verwendet. Jeder Link funktioniert einmal.
link-superseded = Dieser Link zum Zurücksetzen des Passworts funktioniert nicht mehr, weil Ihr Passwort nach dem Versand geändert wurde.
link-suspended = Ihr Konto ist gesperrt, daher kann sein Passwort nicht zurückgesetzt werden.
reset-requests-locked = { $minutes ->
    [one] Zu viele Anfragen zum Zurücksetzen des Passworts. Versuchen Sie es in { $minutes } Minute erneut.
   *[other] Zu viele Anfragen zum Zurücksetzen des Passworts. Versuchen Sie es in { $minutes } Minuten erneut.
}

## Anfragen, die nicht verwendet werden können
sso-rejected-title = Diese Anmeldeanfrage kann nicht verwendet werden
sso-rejected-sign-out-title = Diese Abmeldeanfrage kann nicht verwendet werden
sso-rejected-expired = Diese Anmeldeseite ist abgelaufen oder wurde in einem anderen Browser geöffnet. Starten Sie die Anmeldung erneut in der Anwendung.
sso-rejected-replayed = Diese Anmeldeanfrage wurde bereits verwendet. Starten Sie die Anmeldung erneut in der Anwendung.
sso-rejected-clock = Diese Anmeldeanfrage ist zu alt, oder die Uhren der Anwendung und von idbridge gehen unterschiedlich. Starten Sie die Anmeldung erneut in der Anwendung.
sso-rejected-other = Die Anwendung hat eine Anfrage geschickt, die idbridge nicht beantworten kann. Details für Ihre IT-Administration: { $detail }
sso-start-title = Starten Sie bei Microsoft 365
sso-start-message = Auf diese Seite schickt Microsoft 365 Sie zur Anmeldung, und sie wurde ohne Anmeldeanfrage geöffnet. Gehen Sie zu https://www.office.com und melden Sie sich mit Ihrer geschäftlichen E-Mail an: Sie kommen von selbst hierher zurück. Um Ihr Konto zu verwalten (Passwort, Anmeldemethoden), öffnen Sie { $portal }.

## Fehlerseiten
err-bad-request-hint = Gehen Sie zurück zu der Anwendung, bei der Sie sich anmelden wollten, und versuchen Sie es erneut. Wenn das immer wieder passiert, sagen Sie es Ihrer IT-Administration.
err-not-found-title = Nicht gefunden
err-not-found-message = Unter dieser Adresse gibt es keine Seite.
err-busy-title = Gerade zu viele Anmeldungen
err-busy-message = idbridge prüft gerade viele Passwörter gleichzeitig und konnte Ihres nicht annehmen.
err-busy-hint = Warten Sie ein paar Sekunden und versuchen Sie es erneut.
err-internal-title = Etwas ist schiefgelaufen
err-internal-message = idbridge konnte diese Anfrage nicht abschließen.
err-internal-hint = Versuchen Sie es gleich noch einmal. Wenn es weiter fehlschlägt, geben Sie Ihrer IT-Administration diese Referenz.
err-wrong-passwords-locked = { $minutes ->
    [one] Zu viele falsche Passwörter. Versuchen Sie es in { $minutes } Minute erneut.
   *[other] Zu viele falsche Passwörter. Versuchen Sie es in { $minutes } Minuten erneut.
}
