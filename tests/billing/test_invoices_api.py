"""GET /api/v1/invoices, the Billing page's invoices and the PDF of Hearth's own invoices: owners only, another
tenant's invoice is 404."""
from django.test import Client

from billing.invoices import invoice_issue
from billing.models import BillingEvent
from billing.services import invoice_line_add
from tests.billing.outbox_support import tenant_billed_by, utc
from tests.conftest import api_client_for
from tests.factories import MembershipFactory


def invoice_for(tenant, month, *, issue=True):
    event = BillingEvent.objects.create(tenant=tenant, tenant_slug=tenant.slug, kind="plan_fee",
                                        period_start=utc(2026, month, 1), quantity=1, amount_cents=90000,
                                        identifier=f"fee:t{tenant.pk}:2026-{month:02d}")
    invoice = invoice_line_add(event=event).invoice
    return invoice_issue(invoice=invoice, now=utc(2026, month + 1, 5)) if issue else invoice


def test_owners_list_their_issued_invoices_with_a_pdf(db):
    tenant = tenant_billed_by("invoice", plan="enterprise")
    issued, draft = invoice_for(tenant, 10), invoice_for(tenant, 11, issue=False)
    owner = api_client_for(MembershipFactory(tenant=tenant, role="owner"))

    rows = owner.get("/api/v1/invoices").json()
    assert [(row["provider"], row["id"], row["number"], row["amount_cents"]) for row in rows] == [
        ("invoice", str(issued.pk), issued.number, 90000)]
    pdf = owner.get(rows[0]["pdf_url"].removeprefix("http://testserver"))
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    assert owner.get(f"/api/v1/invoices/{draft.pk}/pdf").status_code == 404  # a draft is not issued yet


def test_another_tenant_and_a_member_without_the_role_see_no_invoice(db):
    tenant = tenant_billed_by("invoice", plan="enterprise")
    issued = invoice_for(tenant, 10)
    stranger = api_client_for(MembershipFactory(tenant=tenant_billed_by("invoice"), role="owner"))
    assert stranger.get("/api/v1/invoices").json() == []
    missing = stranger.get(f"/api/v1/invoices/{issued.pk + 1000}/pdf")
    theirs = stranger.get(f"/api/v1/invoices/{issued.pk}/pdf")
    assert theirs.status_code == missing.status_code == 404 and theirs.json() == missing.json()

    for role in ("admin", "member"):
        member = api_client_for(MembershipFactory(tenant=tenant, role=role))
        assert member.get("/api/v1/invoices").status_code == 403
        assert member.get(f"/api/v1/invoices/{issued.pk}/pdf").status_code == 403


def test_the_billing_page_lists_invoices_with_pdfs_for_owners_only(db):
    tenant = tenant_billed_by("invoice", plan="enterprise")
    issued = invoice_for(tenant, 10)
    owner, member = (MembershipFactory(tenant=tenant, role=role) for role in ("owner", "member"))
    browser = Client()
    browser.force_login(owner.user)
    page = browser.get("/billing/").content.decode()
    pdf_url = f"/billing/invoices/{issued.pk}/pdf"
    assert issued.number in page and pdf_url in page
    pdf = browser.get(pdf_url)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    browser.force_login(member.user)
    assert issued.number not in browser.get("/billing/").content.decode()
    assert browser.get(pdf_url).status_code == 404
    browser.force_login(MembershipFactory(tenant=tenant_billed_by("invoice"), role="owner").user)
    assert browser.get(pdf_url).status_code == 404
