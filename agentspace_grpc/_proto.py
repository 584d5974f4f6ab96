"""The one module that imports the generated code; everything else imports from here."""

from __future__ import annotations

from agentspace_grpc_pb.google.cloud.discoveryengine.v1alpha import (
    authorization_service_pb2 as authz_pb2,
)
from agentspace_grpc_pb.google.cloud.discoveryengine.v1alpha import (
    authorization_service_pb2_grpc as authz_pb2_grpc,
)
from agentspace_grpc_pb.google.cloud.discoveryengine.v1alpha import (
    data_connector_service_pb2 as pb2,
)
from agentspace_grpc_pb.google.cloud.discoveryengine.v1alpha import (
    data_connector_service_pb2_grpc as pb2_grpc,
)
from google.protobuf import descriptor

AcquireAccessTokenRequest = pb2.AcquireAccessTokenRequest
AcquireAccessTokenResponse = pb2.AcquireAccessTokenResponse
AcquireAndStoreRefreshTokenRequest = pb2.AcquireAndStoreRefreshTokenRequest
AcquireAndStoreRefreshTokenResponse = pb2.AcquireAndStoreRefreshTokenResponse
AdditionalOAuthResponse = pb2.AdditionalOAuthResponse
CheckRefreshTokenRequest = pb2.CheckRefreshTokenRequest
CheckRefreshTokenResponse = pb2.CheckRefreshTokenResponse
RefreshTokenInfo = pb2.RefreshTokenInfo

DataConnectorServiceStub = pb2_grpc.DataConnectorServiceStub
DataConnectorServiceServicer = pb2_grpc.DataConnectorServiceServicer
add_DataConnectorServiceServicer_to_server = pb2_grpc.add_DataConnectorServiceServicer_to_server

AcquireUserAuthorizationRequest = authz_pb2.AcquireUserAuthorizationRequest
AcquireUserAuthorizationResponse = authz_pb2.AcquireUserAuthorizationResponse
StoreUserAuthorizationRequest = authz_pb2.StoreUserAuthorizationRequest
StoreUserAuthorizationResponse = authz_pb2.StoreUserAuthorizationResponse

AuthorizationServiceStub = authz_pb2_grpc.AuthorizationServiceStub

SERVICE: descriptor.ServiceDescriptor = pb2.DESCRIPTOR.services_by_name["DataConnectorService"]
FILE: descriptor.FileDescriptor = pb2.DESCRIPTOR
AUTHORIZATION_SERVICE: descriptor.ServiceDescriptor = authz_pb2.DESCRIPTOR.services_by_name[
    "AuthorizationService"
]
AUTHORIZATION_FILE: descriptor.FileDescriptor = authz_pb2.DESCRIPTOR
