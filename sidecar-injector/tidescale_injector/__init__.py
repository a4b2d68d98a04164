"""The admission webhooks: inject the tidescale agent into opted-in pods, check Deployment hints.

- :mod:`tidescale_injector.patch`: pure, a pod -> the JSON Patch that adds the agent;
- :mod:`tidescale_injector.review`: AdmissionReview in and out for both webhooks;
- :mod:`tidescale_injector.server`: HTTPS, certificate reload, probes, metrics; ``main(argv)``.
"""
