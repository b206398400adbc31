//! The data dictionary's code lists that posd reads or writes. Every list
//! keeps a value it does not know as `Other(String)`, exactly as sent: a new
//! error condition or entry mode from a terminal is shown, never a parse
//! failure. Known values are written with the dictionary's spelling; a few
//! spellings the reference library also accepts (`WrongPin`, `Icc`, `Ok`)
//! are read as the value they stand for.

/// One code list: its known values with their wire spelling (and the other
/// spellings read as them), plus `Other` for the rest.
macro_rules! code_list {
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $wire:literal $(| $alias:literal)*,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this crate does not know, kept as sent.
            Other(String),
        }

        impl $name {
            /// The value as written on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)+
                    Self::Other(text) => text.as_str(),
                }
            }

            /// Reads a wire value; anything unknown becomes `Other`.
            pub fn from_wire(text: &str) -> Self {
                match text {
                    $($wire $(| $alias)* => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                Ok(Self::from_wire(&text))
            }
        }
    };
}

code_list! {
    /// `MessageHeader.MessageClass`.
    MessageClass {
        Service = "Service",
        Device = "Device",
        Event = "Event",
    }
}

code_list! {
    /// `MessageHeader.MessageCategory` and `MessageReference.MessageCategory`.
    MessageCategory {
        Payment = "Payment",
        TransactionStatus = "TransactionStatus",
        Abort = "Abort",
        Reversal = "Reversal",
        Diagnosis = "Diagnosis",
        Reconciliation = "Reconciliation",
        Event = "Event",
        Display = "Display",
        Input = "Input",
        Print = "Print",
        CardAcquisition = "CardAcquisition",
        Login = "Login",
        Logout = "Logout",
        Admin = "Admin",
        GetTotals = "GetTotals",
    }
}

code_list! {
    /// `MessageHeader.MessageType`.
    MessageType {
        Request = "Request",
        Response = "Response",
        Notification = "Notification",
    }
}

code_list! {
    /// `Response.Result`.
    ResultType {
        Success = "Success",
        Failure = "Failure",
        /// Part of the amount was approved (AuthorizedAmount below RequestedAmount).
        Partial = "Partial",
    }
}

code_list! {
    /// `Response.ErrorCondition`: why a request failed.
    ErrorCondition {
        Aborted = "Aborted",
        Busy = "Busy",
        Cancel = "Cancel",
        DeviceOut = "DeviceOut",
        /// The referenced transaction is still running (TransactionStatus: ask again).
        InProgress = "InProgress",
        InsertedCard = "InsertedCard",
        InvalidCard = "InvalidCard",
        LoggedOut = "LoggedOut",
        MessageFormat = "MessageFormat",
        NotAllowed = "NotAllowed",
        /// The referenced transaction is unknown (TransactionStatus: never booked).
        NotFound = "NotFound",
        PaymentRestriction = "PaymentRestriction",
        Refusal = "Refusal",
        UnavailableDevice = "UnavailableDevice",
        UnavailableService = "UnavailableService",
        UnreachableHost = "UnreachableHost",
        WrongPin = "WrongPIN" | "WrongPin",
    }
}

code_list! {
    /// `PaymentData.PaymentType` and `PaymentResult.PaymentType`.
    PaymentType {
        /// A sale (the default when absent).
        Normal = "Normal",
        /// A refund without reference to an earlier payment.
        Refund = "Refund",
        CashAdvance = "CashAdvance",
        Completion = "Completion",
    }
}

code_list! {
    /// `PaymentReceipt.DocumentQualifier` (and TransactionStatus's `DocumentQualifier`).
    DocumentQualifier {
        CashierReceipt = "CashierReceipt",
        CustomerReceipt = "CustomerReceipt",
        Document = "Document",
        Journal = "Journal",
        SaleReceipt = "SaleReceipt",
        Voucher = "Voucher",
    }
}

code_list! {
    /// `CardData.EntryMode`: how the card was read.
    EntryMode {
        Contactless = "Contactless",
        File = "File",
        Icc = "ICC" | "Icc",
        Keyed = "Keyed",
        MagStripe = "MagStripe",
        Manual = "Manual",
        Mobile = "Mobile",
        Rfid = "RFID" | "Rfid",
        Scanned = "Scanned",
        SynchronousIcc = "SynchronousICC" | "SynchronousIcc",
        Tapped = "Tapped",
    }
}

code_list! {
    /// `OutputContent.OutputFormat`.
    OutputFormat {
        Text = "Text",
        BarCode = "BarCode",
        MessageRef = "MessageRef",
        Xhtml = "XHTML" | "Xhtml",
    }
}

code_list! {
    /// `PaymentInstrumentData.PaymentInstrumentType`.
    PaymentInstrumentType {
        Card = "Card",
        Cash = "Cash",
        Check = "Check",
        Mobile = "Mobile",
        StoredValue = "StoredValue",
    }
}

code_list! {
    /// `ReversalRequest.ReversalReason`.
    ReversalReason {
        CustCancel = "CustCancel",
        Malfunction = "Malfunction",
        MerchantCancel = "MerchantCancel",
        Unable2Compl = "Unable2Compl",
    }
}

code_list! {
    /// `ReconciliationRequest.ReconciliationType`.
    ReconciliationType {
        /// End of day: the terminal closes its period and answers its totals.
        SaleReconciliation = "SaleReconciliation",
        AcquirerReconciliation = "AcquirerReconciliation",
        AcquirerSynchronisation = "AcquirerSynchronisation",
        PreviousReconciliation = "PreviousReconciliation",
    }
}

code_list! {
    /// `POIStatus.GlobalStatus`.
    GlobalStatus {
        Ok = "OK" | "Ok",
        Busy = "Busy",
        Maintenance = "Maintenance",
        Unreachable = "Unreachable",
    }
}

code_list! {
    /// `PaymentTotals.TransactionType`.
    TransactionType {
        Debit = "Debit",
        Credit = "Credit",
        ReverseDebit = "ReverseDebit",
        ReverseCredit = "ReverseCredit",
        Declined = "Declined",
        Failed = "Failed",
    }
}
