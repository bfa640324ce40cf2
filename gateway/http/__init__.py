"""What both public listeners (and the admin API) share to read a request and write an answer:
the one problem+json renderer that counts refusals (``problem``), the one bounded body reader
(``request_body``) and small JSON bodies (``json_body``), ``100 Continue`` only after the checks
(``expect_continue``) and the headers every answer carries (``answer_headers``)."""
