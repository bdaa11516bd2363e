from django.urls import path

from dispatcher.api import DeliveryReceiptView, DispatcherViewSet, ProviderListView, TwilioReceiptView
from dispatcher.inbound_api import InboundView, TwilioInboundView

urlpatterns = [
    path(
        "dispatcher/",
        DispatcherViewSet.as_view({"get": "retrieve", "patch": "partial_update"}),
        name="dispatcher",
    ),
    path("dispatcher/start/", DispatcherViewSet.as_view({"post": "start"}), name="dispatcher-start"),
    path("dispatcher/stop/", DispatcherViewSet.as_view({"post": "stop"}), name="dispatcher-stop"),
    path("receipts/", DeliveryReceiptView.as_view(), name="receipts"),
    path("receipts/twilio/<slug:provider>/", TwilioReceiptView.as_view(), name="receipts-twilio"),
    path("providers/", ProviderListView.as_view(), name="providers"),
    path("inbound/", InboundView.as_view(), name="inbound"),
    path("inbound/twilio/<slug:provider>/", TwilioInboundView.as_view(), name="inbound-twilio"),
]
